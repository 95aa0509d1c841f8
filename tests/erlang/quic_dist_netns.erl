%%% @doc Network namespaces for the fault tests (root only).
%%%
%%% `create/0' makes two namespaces, `a' and `b', joined by a veth pair with private addresses
%%% (a /30 in 10.254.0.0/16), loopback up, segmentation offloads off (one datagram or segment
%%% per packet, as on a wire, so losses hit single datagrams) and one epmd in each. Nodes
%%% started in a namespace (quic_dist_test_peers:start/2 with the options of `node_opts/3':
%%% `ip netns exec') are named `x@IP' with that side's veth address, and run the QUIC carrier
%%% or, to compare, TCP distribution.
%%% Faults: `cut/1,2' and `heal/1' (`ip link set DEV down/up'), `set_loss/2' (nftables: a
%%% rule `numgen random mod 100 < N drop' on each side's input, so loss is both ways; the
%%% kernel here has no netem), `set_rate/2' (`tc qdisc ... tbf' on each side's egress),
%%% `rebind/3' (nftables rewrites a side's UDP port both ways, as when a NAT in front of it
%%% gives the flow a new mapping), `block_udp/2' (Side drops every UDP datagram it gets, as a
%%% firewall that passes TCP only).
%%%
%%% Names are unique per run and per call: `qdf_<OS pid>_<N>_a' (or `$QUIC_DIST_NETNS_PREFIX'
%%% instead of `qdf_<OS pid>', which lets scripts/run-erlang-tests.sh delete anything a killed
%%% run left behind). `destroy/1' always deletes both namespaces; nothing is changed outside
%%% them (the veth pair is created directly inside them).
-module(quic_dist_netns).

-export([available/0, create/0, destroy/1,
         ns/2, ip/2, dev/2, node_opts/3,
         cut/1, cut/2, heal/1, set_loss/2, set_rate/2, rebind/3, block_udp/2, unblock_udp/2,
         rx_bytes/2, tx_bytes/2, cmd/2]).

-define(DEV_A, "qdf_a").
-define(DEV_B, "qdf_b").
-define(NFT_TABLE, "qdfault").
-define(NFT_NAT_TABLE, "qdnat").
-define(NFT_FIREWALL_TABLE, "qdfw").
-define(AVAILABLE_KEY, {?MODULE, available}).

-type side() :: a | b.
-type net() :: #{a := #{ns := string(), ip := string(), dev := string()},
                 b := #{ns := string(), ip := string(), dev := string()}}.
-export_type([net/0, side/0]).

%%% ------------------------------------------------------------------
%%% Can we?
%%% ------------------------------------------------------------------

%% @doc `ok' if this machine lets the tests create namespaces, veth pairs, nftables rules and
%% tbf qdiscs; otherwise `{skip, Why}'. Probed once per VM (with a namespace of its own,
%% deleted at once).
-spec available() -> ok | {skip, string()}.
available() ->
    case persistent_term:get(?AVAILABLE_KEY, undefined) of
        undefined ->
            R = probe(),
            persistent_term:put(?AVAILABLE_KEY, R),
            R;
        R ->
            R
    end.

probe() ->
    Missing = [T || T <- ["ip", "nft", "tc", "epmd"], os:find_executable(T) =:= false],
    case {is_root(), Missing} of
        {false, _} ->
            {skip, "network namespace tests need root"};
        {true, [_ | _]} ->
            {skip, "network namespace tests need " ++ lists:join(", ", Missing) ++
                 " (iproute2, nftables)"};
        {true, []} ->
            Ns = prefix() ++ "_probe",
            try
                must("ip", ["netns", "add", Ns]),
                must("ip", ["-n", Ns, "link", "add", ?DEV_A, "type", "veth",
                            "peer", "name", ?DEV_B]),
                must("ip", ["netns", "exec", Ns, "nft", "add", "table", "inet", ?NFT_TABLE]),
                must("tc", ["-n", Ns, "qdisc", "add", "dev", ?DEV_A, "root", "tbf",
                            "rate", "100mbit", "burst", "64kb", "latency", "20ms"]),
                ok
            catch
                error:{command_failed, Prog, Args, Status, Out} ->
                    {skip, lists:flatten(io_lib:format("cannot set up network namespaces "
                                                       "here: ~ts ~ts: exit ~b: ~ts",
                                                       [Prog, lists:join(" ", Args), Status,
                                                        string:trim(Out)]))}
            after
                _ = cmd("ip", ["netns", "del", Ns])
            end
    end.

is_root() ->
    case file:read_file("/proc/self/status") of
        {ok, Status} ->
            case re:run(Status, "^Uid:\\s+(\\d+)\\s+(\\d+)", [multiline, {capture, all_but_first, list}]) of
                {match, [_Real, "0"]} -> true;
                _ -> false
            end;
        _ ->
            false
    end.

%%% ------------------------------------------------------------------
%%% Namespaces
%%% ------------------------------------------------------------------

%% @doc Two new namespaces joined by a veth pair, each with its epmd. On any failure,
%% whatever was created is deleted and the call fails.
-spec create() -> net().
create() ->
    N = erlang:unique_integer([positive]),
    Base = prefix() ++ "_" ++ integer_to_list(N),
    Subnet = lists:flatten(io_lib:format("10.254.~b.", [N rem 250])),
    Net = #{a => #{ns => Base ++ "_a", ip => Subnet ++ "1", dev => ?DEV_A},
            b => #{ns => Base ++ "_b", ip => Subnet ++ "2", dev => ?DEV_B}},
    #{a := #{ns := NsA}, b := #{ns := NsB}} = Net,
    try
        must("ip", ["netns", "add", NsA]),
        must("ip", ["netns", "add", NsB]),
        must("ip", ["link", "add", ?DEV_A, "netns", NsA, "type", "veth",
                    "peer", "name", ?DEV_B, "netns", NsB]),
        lists:foreach(
          fun(Side) ->
                  #{ns := Ns, ip := Ip, dev := Dev} = maps:get(Side, Net),
                  must("ip", ["-n", Ns, "addr", "add", Ip ++ "/30", "dev", Dev]),
                  must("ip", ["-n", Ns, "link", "set", "lo", "up"]),
                  must("ip", ["-n", Ns, "link", "set", Dev, "up"]),
                  one_datagram_per_packet(Ns, Dev),
                  must("ip", ["netns", "exec", Ns, "epmd", "-daemon"])
          end, [a, b]),
        [wait_epmd(ns(Net, S)) || S <- [a, b]],
        Net
    catch
        Class:Reason:Stack ->
            destroy(Net),
            erlang:raise(Class, Reason, Stack)
    end.

%% Segmentation and receive offloads off, UDP's too (`gso off' does not cover it), so that
%% every packet on the link is at most one MTU, as on a wire: with them on, a QUIC sender's
%% batches of datagrams cross the veth as one packet and the loss rule drops whole batches.
%% Without ethtool the link keeps them (the tests still pass; losses then come in batches).
one_datagram_per_packet(Ns, Dev) ->
    case cmd("ip", ["netns", "exec", Ns, "ethtool", "-K", Dev, "tso", "off", "gso", "off",
                    "gro", "off", "tx-udp-segmentation", "off"]) of
        {0, _} -> ok;
        {_, Out} -> io:format(user, "~n    ~s: offloads stay on (~ts)~n", [Dev, string:trim(Out)])
    end.

%% epmd -daemon returns before the daemon listens: poll it (bounded).
wait_epmd(Ns) ->
    wait_epmd(Ns, erlang:monotonic_time(millisecond) + 5000).

wait_epmd(Ns, Deadline) ->
    case cmd("ip", ["netns", "exec", Ns, "epmd", "-names"]) of
        {0, _} -> ok;
        {_, Out} ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error({epmd_not_running, Ns, Out});
                false -> receive after 20 -> wait_epmd(Ns, Deadline) end
            end
    end.

%% @doc Deletes both namespaces: first ends every process still inside them (our epmd, and
%% any node that the test did not stop), then the namespaces (and with them the veth pair,
%% nftables rules and qdiscs). Never fails.
-spec destroy(net()) -> ok.
destroy(Net) ->
    Nss = [Ns || S <- [a, b], #{ns := Ns} <- [maps:get(S, Net)], exists(Ns)],
    lists:foreach(fun(Ns) -> signal_all(Ns, "TERM") end, Nss),
    lists:foreach(fun(Ns) -> wait_empty(Ns, erlang:monotonic_time(millisecond) + 3000) end, Nss),
    lists:foreach(fun(Ns) ->
                          signal_all(Ns, "KILL"),
                          wait_empty(Ns, erlang:monotonic_time(millisecond) + 3000),
                          case cmd("ip", ["netns", "del", Ns]) of
                              {0, _} -> ok;
                              {S, Out} -> io:format(user, "~n    cannot delete netns ~s: "
                                                    "exit ~b: ~ts", [Ns, S, Out])
                          end
                  end, Nss),
    ok.

exists(Ns) ->
    {_, Out} = cmd("ip", ["netns", "list"]),
    lists:any(fun(Line) -> hd(string:lexemes(Line ++ " ", " ")) =:= Ns end,
              string:lexemes(Out, "\n")).

pids(Ns) ->
    {_, Out} = cmd("ip", ["netns", "pids", Ns]),
    string:lexemes(Out, "\n ").

signal_all(Ns, Sig) ->
    case pids(Ns) of
        [] -> ok;
        Pids -> _ = cmd("kill", ["-" ++ Sig | Pids]), ok
    end.

wait_empty(Ns, Deadline) ->
    case pids(Ns) of
        [] -> ok;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> timeout;
                false -> receive after 50 -> wait_empty(Ns, Deadline) end
            end
    end.

-spec ns(net(), side()) -> string().
ns(Net, Side) -> maps:get(ns, maps:get(Side, Net)).

-spec ip(net(), side()) -> string().
ip(Net, Side) -> maps:get(ip, maps:get(Side, Net)).

-spec dev(net(), side()) -> string().
dev(Net, Side) -> maps:get(dev, maps:get(Side, Net)).

%% @doc Options for quic_dist_test_peers:start/2 (and start_many/2) that start the node in the
%% namespace of Side, named x@IP with that side's address (other options as start/2, e.g.
%% `carrier => tcp'). Several nodes can share a side: they share its address.
-spec node_opts(net(), side(), map()) -> map().
node_opts(Net, Side, Opts) ->
    Opts#{netns => ns(Net, Side), host => ip(Net, Side)}.

%%% ------------------------------------------------------------------
%%% Faults
%%% ------------------------------------------------------------------

%% @doc Cuts the link: both ends of the veth pair go down (each side's sends then fail with
%% "network unreachable"; nothing crosses).
-spec cut(net()) -> ok.
cut(Net) ->
    cut(Net, both).

%% @doc Takes one end (or both) down. With one end down, the other end loses its carrier and
%% drops what it sends silently.
-spec cut(net(), side() | both) -> ok.
cut(Net, both) ->
    cut(Net, a),
    cut(Net, b);
cut(Net, Side) ->
    must("ip", ["-n", ns(Net, Side), "link", "set", dev(Net, Side), "down"]).

%% @doc Both ends up again (the kernel puts the subnet route back).
-spec heal(net()) -> ok.
heal(Net) ->
    [must("ip", ["-n", ns(Net, S), "link", "set", dev(Net, S), "up"]) || S <- [a, b]],
    ok.

%% @doc Drops Percent % of the packets that arrive on each veth end (so both ways); 0 removes
%% the rules.
-spec set_loss(net(), 0..100) -> ok.
set_loss(Net, Percent) when is_integer(Percent), Percent >= 0, Percent =< 100 ->
    lists:foreach(
      fun(S) ->
              Ns = ns(Net, S),
              _ = cmd("ip", ["netns", "exec", Ns, "nft", "delete", "table", "inet", ?NFT_TABLE]),
              case Percent of
                  0 -> ok;
                  _ -> input_rule(Net, S, ?NFT_TABLE, ["numgen", "random", "mod", "100",
                                                        "<", integer_to_list(Percent), "drop"])
              end
      end, [a, b]).

%% @doc NAT rebinding of Side's socket on port From: from now on its datagrams to the other
%% side leave from port To, and datagrams to To reach From, as when a NAT in front of Side
%% forgets a mapping and makes a new one. Stateless rewriting in Side's namespace (a conntrack
%% NAT rule would rebind only flows whose next packet happens to go out before one comes in).
-spec rebind(net(), side(), {inet:port_number(), inet:port_number()}) -> ok.
rebind(Net, Side, {From, To}) when is_integer(From), is_integer(To) ->
    Peer = ip(Net, case Side of a -> b; b -> a end),
    Nft = fun(Args) -> nft(Net, Side, Args) end,
    Nft(["add", "table", "ip", ?NFT_NAT_TABLE]),
    Nft(["add", "chain", "ip", ?NFT_NAT_TABLE, "out",
         "{ type filter hook output priority 0; }"]),
    Nft(["add", "chain", "ip", ?NFT_NAT_TABLE, "in",
         "{ type filter hook prerouting priority -300; }"]),
    Nft(["add", "rule", "ip", ?NFT_NAT_TABLE, "out", "ip", "daddr", Peer,
         "udp", "sport", integer_to_list(From), "udp", "sport", "set", integer_to_list(To)]),
    Nft(["add", "rule", "ip", ?NFT_NAT_TABLE, "in", "ip", "saddr", Peer,
         "udp", "dport", integer_to_list(To), "udp", "dport", "set", integer_to_list(From)]),
    ok.

%% @doc A firewall in front of Side that passes TCP only: every UDP datagram arriving on its
%% veth end is dropped (epmd, over TCP, still answers).
-spec block_udp(net(), side()) -> ok.
block_udp(Net, Side) ->
    input_rule(Net, Side, ?NFT_FIREWALL_TABLE, ["meta", "l4proto", "udp", "drop"]).

%% @doc Removes block_udp/2's firewall.
-spec unblock_udp(net(), side()) -> ok.
unblock_udp(Net, Side) ->
    nft(Net, Side, ["delete", "table", "inet", ?NFT_FIREWALL_TABLE]).

%% A new nftables table in Side's namespace whose one rule applies Rule to what arrives on
%% Side's veth end.
input_rule(Net, Side, Table, Rule) ->
    Nft = fun(Args) -> nft(Net, Side, Args) end,
    Nft(["add", "table", "inet", Table]),
    Nft(["add", "chain", "inet", Table, "input", "{ type filter hook input priority 0; }"]),
    Nft(["add", "rule", "inet", Table, "input", "iifname", dev(Net, Side) | Rule]).

%% Runs `nft Args' in Side's namespace; fails if it fails.
nft(Net, Side, Args) ->
    must("ip", ["netns", "exec", ns(Net, Side), "nft" | Args]).

%% @doc Limits each veth end's egress to Rate (tc syntax, e.g. "100mbit") with a token bucket
%% (64 KB burst, 20 ms of queue); `none' removes it.
-spec set_rate(net(), string() | none) -> ok.
set_rate(Net, Rate) ->
    lists:foreach(
      fun(S) ->
              Args = ["-n", ns(Net, S), "qdisc"],
              _ = cmd("tc", Args ++ ["del", "dev", dev(Net, S), "root"]),
              case Rate of
                  none -> ok;
                  _ -> must("tc", Args ++ ["add", "dev", dev(Net, S), "root", "tbf",
                                           "rate", Rate, "burst", "64kb", "latency", "20ms"])
              end
      end, [a, b]).

%% @doc Bytes received / sent so far by Side's veth end (kernel counters).
-spec rx_bytes(net(), side()) -> non_neg_integer().
rx_bytes(Net, Side) -> counter(Net, Side, "rx_bytes").

-spec tx_bytes(net(), side()) -> non_neg_integer().
tx_bytes(Net, Side) -> counter(Net, Side, "tx_bytes").

counter(Net, Side, Name) ->
    Path = "/sys/class/net/" ++ dev(Net, Side) ++ "/statistics/" ++ Name,
    {0, Out} = cmd("ip", ["netns", "exec", ns(Net, Side), "cat", Path]),
    list_to_integer(string:trim(Out)).

%%% ------------------------------------------------------------------
%%% Commands
%%% ------------------------------------------------------------------

prefix() ->
    case os:getenv("QUIC_DIST_NETNS_PREFIX") of
        P when is_list(P), P =/= "" -> P;
        _ -> "qdf_" ++ os:getpid()
    end.

%% @doc Runs Prog (looked up in PATH) with Args, no shell: {ExitStatus, Output}.
-spec cmd(string(), [string()]) -> {integer(), string()}.
cmd(Prog, Args) ->
    case os:find_executable(Prog) of
        false ->
            {127, Prog ++ ": not found"};
        Exe ->
            Port = open_port({spawn_executable, Exe},
                             [{args, Args}, exit_status, stderr_to_stdout, binary, hide]),
            collect(Port, [])
    end.

collect(Port, Acc) ->
    receive
        {Port, {data, D}} -> collect(Port, [D | Acc]);
        {Port, {exit_status, S}} ->
            {S, unicode:characters_to_list(lists:reverse(Acc))}
    after 30000 ->
            catch port_close(Port),
            {124, "timeout: " ++ unicode:characters_to_list(lists:reverse(Acc))}
    end.

must(Prog, Args) ->
    case cmd(Prog, Args) of
        {0, _} -> ok;
        {S, Out} -> error({command_failed, Prog, Args, S, Out})
    end.
