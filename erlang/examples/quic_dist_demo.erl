%%% @doc `make demo': two nodes over QUIC on loopback. This node (demo_a) starts demo_b with
%%% `peer' (controlled over stdio, so every distribution byte goes over QUIC), connects,
%%% exchanges messages and an rpc, prints what the link is, stops demo_b and waits for nodedown.
-module(quic_dist_demo).

-export([run/0, echo/0]).

%% @doc Runs the demo and halts the node (status 0 on success).
-spec run() -> no_return().
run() ->
    try demo() of
        ok -> halt(0)
    catch
        Class:Reason:Stack ->
            io:format("demo failed: ~p:~p~n~p~n", [Class, Reason, Stack]),
            halt(1)
    end.

%% @doc An echo process: returns every {From, Msg} to From.
-spec echo() -> no_return().
echo() ->
    receive
        {From, Msg} -> From ! {self(), Msg}, echo()
    end.

demo() ->
    Flags = string:lexemes(os:getenv("QUIC_DIST_ERL_FLAGS"), " "),
    Ebin = filename:dirname(code:which(?MODULE)),
    io:format("~n== quic_dist demo: Erlang distribution over QUIC ==~n"),
    io:format("node a: ~p (this node)~n", [node()]),
    {ok, Peer, B} = peer:start(#{name => demo_b, host => "127.0.0.1", longnames => true,
                                 connection => standard_io,
                                 args => Flags ++ ["-setcookie", atom_to_list(erlang:get_cookie()),
                                                   "-pa", Ebin]}),
    io:format("node b: ~p (started, not yet connected)~n~n", [B]),

    {ConnectUs, true} = timer:tc(net_kernel, connect_node, [B]),
    io:format("connect_node(~p) -> true in ~.1f ms; nodes() = ~p~n",
              [B, ConnectUs / 1000, nodes()]),

    Echo = spawn(B, ?MODULE, echo, []),
    Msg = {hello, from, node(), erlang:system_time(millisecond)},
    {MsgUs, Msg} = timer:tc(fun() -> Echo ! {self(), Msg},
                                     receive {Echo, M} -> M after 5000 -> timeout end
                            end),
    io:format("message: sent ~p to ~p on b, echoed back in ~b us~n", [Msg, Echo, MsgUs]),

    Big = crypto:strong_rand_bytes(1024 * 1024),
    Echo ! {self(), Big},
    receive {Echo, Big} -> io:format("message: 1 MiB binary echoed back intact~n") after 5000 -> error(no_echo) end,

    Release = rpc:call(B, erlang, system_info, [otp_release]),
    RemoteNodes = rpc:call(B, erlang, nodes, []),
    io:format("rpc: erlang:system_info(otp_release) on b -> ~p; nodes() on b -> ~p~n~n",
              [Release, RemoteNodes]),

    {ok, Info} = quic_dist:info(B),
    print_link(Info),

    erlang:monitor_node(B, true),
    {StopUs, _} = timer:tc(fun() ->
                                   peer:call(Peer, init, stop, []),
                                   receive {nodedown, B} -> ok after 10000 -> error(no_nodedown) end
                           end),
    %% About a second of it is b's own init:stop under peer: a TCP-distributed b takes as long.
    io:format("~nstopped b with init:stop: nodedown after ~.1f ms (b closed the QUIC connection "
              "as it shut down; most of the time is b's shutdown, as over TCP)~n",
              [StopUs / 1000]),
    catch peer:stop(Peer),
    io:format("demo done~n"),
    ok.

print_link(Info) ->
    #{cipher_suite := Cipher, tls_version := Tls, alpn := Alpn, remote := {Ip, Port},
      rtt_us := Rtt, streams := Streams, stats := Stats, peer_certificate := Cert} = Info,
    io:format("link to b:~n"),
    io:format("  transport:   QUIC (quinn) over UDP ~s:~b, ALPN ~s~n", [inet:ntoa(Ip), Port, Alpn]),
    io:format("  encryption:  ~s, ~s, both sides verified (mode ~p)~n",
              [Tls, Cipher, maps:get(mode, Info)]),
    io:format("  peer cert:   ~s, issued by ~s, valid until ~s~n",
              [maps:get(subject, Cert), maps:get(issuer, Cert), maps:get(not_after, Cert)]),
    io:format("  peer names:  ~p~n", [maps:get(subject_alt_names, Cert)]),
    io:format("  rtt:         ~b us (smoothed), congestion window ~b bytes~n",
              [Rtt, maps:get(cwnd, Stats)]),
    io:format("  streams:     ~b~n", [Streams]),
    io:format("  counters:    ~b datagrams sent / ~b received, ~b lost~n",
              [maps:get(datagrams_sent, Stats), maps:get(datagrams_received, Stats),
               maps:get(lost_packets, Stats)]).
