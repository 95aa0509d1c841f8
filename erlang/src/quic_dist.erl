%%% @doc Erlang distribution over QUIC: the carrier module for `-proto_dist quic'.
%%%
%%% Process design (one node, one endpoint, N connections):
%%%
%%% ```
%%%  net_kernel ──listen/accept/setup──> quic_dist (this module, runs in callers)
%%%      │
%%%      ├── acceptor (max priority, linked to net_kernel)
%%%      │     receives {quic_dist_incoming, Conn} from the NIF, starts the two
%%%      │     connection processes and hands them to net_kernel. In cookie mode new
%%%      │     connections wait before TLS until it answers `quic_dist_held' (with the
%%%      │     current cookie's material: quic_dist_cookie); in certificate mode it looks
%%%      │     at the certificate files every 10 s (quic_dist_certfiles).
%%%      │
%%%      └── per connection (quic_dist_conn):
%%%            dist_util supervisor ── the handshake, then con_loop (ticks); never blocks:
%%%              │                    ticks and stats are non-blocking NIF calls
%%%              └─ controller (output handler, registered with the runtime)
%%%                   drains dist_ctrl_get_data in batches, one NIF call per batch;
%%%                   pauses on `busy' until the NIF says `quic_dist_writable'
%%%                   └─ input handler: receives batches of packets from the NIF,
%%%                      calls dist_ctrl_put_data, acknowledges consumed bytes
%%%                   (both high priority for small messages on a busy node, normal for
%%%                   bulk data: quic_dist_urgency)
%%%
%%%  receiver (quic_dist_receiver, high priority, one per node, not linked): woken by ERTS
%%%      when the UDP socket is readable; one NIF call reads a bounded batch, runs QUIC and
%%%      sends packets to the input handlers, connections to the acceptor, results to
%%%      connecting processes.
%%%      └─ poller (low priority, linked): after a datagram, reads the socket in a loop for
%%%         `poll_us' while its scheduler has nothing else to do (no select meanwhile); the
%%%         input handler of the node's only connection takes these turns while its
%%%         datagrams come one at a time (it then hands its packets to the runtime itself).
%%%
%%%  quic_dist_log (childspec, started before net_kernel): loads the NIF and turns Rust
%%%  `tracing' events into `logger' events.
%%%
%%%  NIF (Rust): one QUIC endpoint (one UDP socket) per node, driven by the calling scheduler:
%%%  conn_send encrypts and sends in the controller's call, endpoint_receive in the receiver's;
%%%  one Rust thread runs QUIC's timers only. Nothing in the NIF blocks a scheduler; both calls
%%%  count their work against the caller's time slice.
%%% '''
%%%
%%% The "socket" that dist_util passes to our funs is the tuple
%%% `{quic_dist, Controller, InputHandler, Conn}' built by quic_dist_conn.
%%%
%%% IPv4 (`-proto_dist quic'); `quic6_dist' (`-proto_dist quic6') runs the same callbacks over
%%% IPv6, as inet6_tcp_dist does for TCP. The family is an argument until the endpoint is
%%% open, then the endpoint's (`family/0').
-module(quic_dist).

%% Carrier callbacks called by net_kernel.
-export([listen/1, listen/2, accept/1, accept_connection/5, setup/5, close/1,
         select/1, address/0, is_node_name/1, setopts/2, getopts/2, childspecs/0]).

%% The same callbacks for another address family (quic6_dist).
-export([listen/3, setup/6, select/2, address/1]).

%% User API.
-export([info/1, info/0, connections/0, data_streams/0, mailbox_limit/0, nif_memory/0,
         reload_certificates/0]).

%% For the tests.
-export([connection_modules/0]).

-include_lib("kernel/include/net_address.hrl").
-include_lib("kernel/include/dist_util.hrl").
-include_lib("kernel/include/logger.hrl").

-define(ENDPOINT_KEY, {?MODULE, endpoint}).
-define(OPTS_KEY, {?MODULE, opts}).
-define(PROTOCOL, quic).
%% The address family of the node's endpoint, once open.
-define(FAMILY_KEY, {?MODULE, family}).
%% A QUIC handshake takes milliseconds; one that lost its first datagrams sends them again
%% after about 1 s, then 2 s more. One not done after this is worth a warning.
-define(HANDSHAKE_OVERDUE_MS, 3000).
%% What a connection's set-up calls on either side, beyond what a node loads to start
%% distribution. A node started with -noshell (by `peer', or a release in interactive mode) may
%% not have `string' and `unicode_util' yet, which dist_util:split_node/1 needs: loading them
%% made the first connection of such a node wait 5-16 ms for the code server.
-define(CONNECTION_MODULES, [dist_util, string, unicode_util, quic_dist_conn, quic_dist_cookie,
                             quic_dist_certfiles, quic_dist_identity]).

%%% ------------------------------------------------------------------
%%% Callbacks
%%% ------------------------------------------------------------------

%% @doc Children started under net_sup before epmd and net_kernel: the NIF runtime and logging.
-spec childspecs() -> {ok, [supervisor:child_spec()]}.
childspecs() ->
    {ok, [#{id => quic_dist_log,
            start => {quic_dist_log, start_link, []},
            restart => permanent,
            shutdown => 2000,
            type => worker,
            modules => [quic_dist_log]}]}.

%% @doc Opens the node's UDP endpoint and registers its port with epmd (OTP < 23 entry point).
-spec listen(atom()) -> {ok, {term(), #net_address{}, integer()}} | {error, term()}.
listen(Name) ->
    {ok, Host} = inet:gethostname(),
    listen(Name, Host).

%% @doc Opens the node's UDP endpoint and registers its port with epmd.
-spec listen(atom(), string()) -> {ok, {term(), #net_address{}, integer()}} | {error, term()}.
listen(Name, Host) ->
    listen(Name, Host, inet).

%% @doc listen/2 over the address family Family (inet or inet6).
-spec listen(atom(), string(), inet | inet6) ->
          {ok, {term(), #net_address{}, integer()}} | {error, term()}.
listen(Name, Host, Family) ->
    Opts = quic_dist_opts:get(),
    quic_dist_log:ensure_started(Opts),
    case open_listen_endpoint(Opts, Host, Family, port_candidates(Name, Host, Opts)) of
        {error, already_open} ->
            %% `-proto_dist quic quic6': the node has one endpoint, one receiver, one family.
            Reason = <<"quic and quic6 cannot run side by side in one node (one UDP endpoint "
                       "per node): give -proto_dist one of them">>,
            ?LOG_ERROR("quic_dist cannot listen: ~ts", [Reason], #{}),
            {error, Reason};
        {ok, Ep, Ip} ->
            Port = quic_dist_nif:endpoint_port(Ep),
            case register_with_epmd(Name, Port, Family) of
                {ok, Creation} ->
                    persistent_term:put(?ENDPOINT_KEY, Ep),
                    persistent_term:put(?OPTS_KEY, Opts),
                    persistent_term:put(?FAMILY_KEY, Family),
                    log_mode(io_lib:format("listening on udp ~s", [address_text(Ip, Port)]),
                             Opts),
                    quic_dist_certfiles:check_own_name(Host),
                    {ok, {Ep, #net_address{address = {Ip, Port}, host = Host,
                                           protocol = ?PROTOCOL, family = Family},
                          Creation}};
                Error ->
                    quic_dist_nif:endpoint_close(Ep, <<"epmd registration failed">>),
                    quic_dist_receiver:stop(),
                    Error
            end;
        {error, Reason} = Error ->
            ?LOG_ERROR("quic_dist cannot listen: ~ts", [format_reason(Reason)],
                       #{}),
            Error
    end.

%% @doc Starts the acceptor, which hands incoming connections to net_kernel.
-spec accept(term()) -> pid().
accept(Ep) ->
    Kernel = self(),
    spawn_opt(fun() -> acceptor_init(Kernel, Ep) end, [link, {priority, max}]).

%% @doc Runs the accepting side of the handshake in a new dist_util supervisor process.
-spec accept_connection(pid(), pid(), node(), list(), non_neg_integer()) -> pid().
accept_connection(AcceptorPid, Ctrl, MyNode, Allowed, SetupTime) ->
    Kernel = self(),
    spawn_opt(fun() ->
                      do_accept(Kernel, AcceptorPid, Ctrl, MyNode, Allowed, SetupTime)
              end, dist_util:net_ticker_spawn_options()).

%% @doc Connects to Node and runs the initiating side of the handshake.
-spec setup(node(), hidden | normal, node(), longnames | shortnames, non_neg_integer()) -> pid().
setup(Node, Type, MyNode, LongOrShortNames, SetupTime) ->
    setup(Node, Type, MyNode, LongOrShortNames, SetupTime, inet).

%% @doc setup/5 over the address family Family.
-spec setup(node(), hidden | normal, node(), longnames | shortnames, non_neg_integer(),
            inet | inet6) -> pid().
setup(Node, Type, MyNode, LongOrShortNames, SetupTime, Family) ->
    Kernel = self(),
    spawn_opt(fun() ->
                      do_setup(Kernel, Node, Type, MyNode, LongOrShortNames, SetupTime, Family)
              end, dist_util:net_ticker_spawn_options()).

%% @doc Closes the endpoint: every connection is closed and peers are told at once.
-spec close(term()) -> ok.
close(Ep) ->
    _ = persistent_term:erase(?ENDPOINT_KEY),
    quic_dist_cookie:forget(),
    quic_dist_certfiles:forget(),
    quic_dist_nif:endpoint_close(Ep, <<"node stopping">>),
    quic_dist_receiver:stop().

%% @doc True if Node's host resolves to an address this carrier can reach.
-spec select(node()) -> boolean().
select(Node) ->
    select(Node, inet).

%% @doc select/1 over the address family Family.
-spec select(node(), inet | inet6) -> boolean().
select(Node, Family) ->
    case dist_util:split_node(Node) of
        {node, Name, Host} ->
            case resolve(Name, Host, Family) of
                {ok, _} -> true;
                _ -> false
            end;
        _ ->
            false
    end.

%% @doc The address record of a node that does not listen (`-dist_listen false').
-spec address() -> #net_address{}.
address() ->
    address(inet).

%% @doc address/0 over the address family Family.
-spec address(inet | inet6) -> #net_address{}.
address(Family) ->
    {ok, Host} = inet:gethostname(),
    #net_address{host = Host, protocol = ?PROTOCOL, family = Family}.

%% @doc True if Node has the form Name@Host.
-spec is_node_name(node()) -> boolean().
is_node_name(Node) when is_atom(Node) ->
    case dist_util:split_node(Node) of
        {node, _, _} -> true;
        _ -> false
    end;
is_node_name(_) ->
    false.

%% @doc Options for new connections: nothing to set on a UDP endpoint.
-spec setopts(term(), list()) -> ok | {error, term()}.
setopts(_Listen, []) -> ok;
setopts(_Listen, Opts) -> {error, {unsupported_options, Opts}}.

%% @doc Options of new connections: none.
-spec getopts(term(), list()) -> {ok, list()}.
getopts(_Listen, _Opts) -> {ok, []}.

%%% ------------------------------------------------------------------
%%% User API
%%% ------------------------------------------------------------------

%% @doc What the link to Node is: peer, TLS cipher and version, peer certificate, RTT, streams
%% and counters. `{error, not_connected}' if Node has no quic_dist connection.
-spec info(node()) -> {ok, map()} | {error, not_connected}.
info(Node) ->
    case lists:keyfind(Node, 1, erlang:system_info(dist_ctrl)) of
        {Node, Ctrl} when is_pid(Ctrl) ->
            try quic_dist_conn:info(Ctrl) of
                Info ->
                    Opts = opts(),
                    Mode = case maps:get(insecure, Opts, false) of
                               true -> insecure;
                               _ -> quic_dist_opts:mode(Opts)
                           end,
                    {ok, Info#{node => Node, mode => Mode}}
            catch
                exit:_ -> {error, not_connected}
            end;
        _ ->
            {error, not_connected}
    end.

%% @doc info/1 of every connected node.
-spec info() -> #{node() => map()}.
info() ->
    maps:from_list([{N, I} || {N, _} <- erlang:system_info(dist_ctrl),
                              {ok, I} <- [info(N)]]).

%% @doc Nodes connected over quic_dist.
-spec connections() -> [node()].
connections() ->
    [N || {N, Ctrl} <- erlang:system_info(dist_ctrl), is_pid(Ctrl),
          quic_dist_conn:is_controller(Ctrl)].

%%% ------------------------------------------------------------------
%%% Accepting side
%%% ------------------------------------------------------------------

%% Asks the NIF for incoming connections and hands each to net_kernel.
acceptor_init(Kernel, Ep) ->
    ok = quic_dist_nif:endpoint_accept(Ep, self(), quic_dist_cookie:tracking()),
    %% Any held before this acceptor (one that died) go on now.
    admit(Ep),
    check_files_later(),
    acceptor_loop(Kernel, Ep).

%% A `quic_dist_check_files' tick for the acceptor, in certificate mode.
check_files_later() ->
    case quic_dist_certfiles:tracking() of
        true ->
            _ = erlang:send_after(quic_dist_certfiles:check_interval_ms(), self(),
                                  quic_dist_check_files),
            ok;
        false ->
            ok
    end.

%% Lets held incoming connections start their TLS handshake, with the current cookie's
%% material in cookie mode (quic_dist_cookie).
admit(Ep) ->
    quic_dist_cookie:follow(Ep),
    quic_dist_nif:endpoint_admit(Ep).

acceptor_loop(Kernel, Ep) ->
    receive
        quic_dist_held ->
            admit(Ep),
            acceptor_loop(Kernel, Ep);
        quic_dist_check_files ->
            quic_dist_certfiles:follow(Ep),
            quic_dist_certfiles:check_validity(),
            check_files_later(),
            acceptor_loop(Kernel, Ep);
        {quic_dist_incoming, Conn} ->
            case quic_dist_conn:start(Conn) of
                {ok, Ctrl} ->
                    Kernel ! {accept, self(), Ctrl, family(), ?PROTOCOL},
                    receive
                        {Kernel, controller, SupPid} ->
                            %% The connection may be gone already (the peer closed it or broke
                            %% the framing at once): its controller is dead and this call
                            %% exits. The supervisor then fails on its own first call and
                            %% net_kernel cleans up. The acceptor must not die: net_kernel
                            %% would start another one, whose endpoint_accept adds a second
                            %% accept loop while the first keeps sending connections to the
                            %% dead acceptor, where they are dropped.
                            _ = catch quic_dist_conn:set_supervisor(Ctrl, SupPid),
                            SupPid ! {self(), controller};
                        {Kernel, unsupported_protocol} ->
                            exit(unsupported_protocol)
                    end;
                {error, Reason} ->
                    ?LOG_WARNING("quic_dist dropped an incoming connection: ~ts",
                                 [format_reason(Reason)])
            end,
            acceptor_loop(Kernel, Ep)
    end.

%% The dist_util supervisor of an accepted connection.
do_accept(Kernel, AcceptorPid, Ctrl, MyNode, Allowed, SetupTime) ->
    %% The acceptor tells us once the controller is linked to this process.
    receive
        {AcceptorPid, controller} -> ok
    end,
    Timer = dist_util:start_timer(SetupTime),
    Socket = quic_dist_conn:socket(Ctrl),
    HSData0 = hs_data(Kernel, MyNode, Socket, Timer),
    HSData = HSData0#hs_data{allowed = Allowed, f_recv = fun checked_first_recv/3},
    dist_util:handshake_other_started(HSData).

%% f_recv of the accepting side: the first message carries the node name the peer claims,
%% which its certificate must back (quic_dist_identity).
checked_first_recv({quic_dist, _, _, Conn} = Socket, Length, Timeout) ->
    case quic_dist_conn:hs_recv(Socket, Length, Timeout) of
        {ok, Message} = Ok ->
            case get(quic_dist_identity_checked) of
                true -> Ok;
                _ ->
                    put(quic_dist_identity_checked, true),
                    Opts = opts(),
                    case quic_dist_identity:check_subject(Conn, Opts) of
                        ok ->
                            case quic_dist_identity:check_claimed_name(Conn, Message, Opts) of
                                ok -> Ok;
                                Error -> Error
                            end;
                        Error ->
                            Error
                    end
            end;
        Error ->
            Error
    end.

%%% ------------------------------------------------------------------
%%% Initiating side
%%% ------------------------------------------------------------------

%% The dist_util supervisor of an outgoing connection.
do_setup(Kernel, Node, Type, MyNode, LongOrShortNames, SetupTime, Family) ->
    Timer = dist_util:start_timer(SetupTime),
    [Name, Host] = split_node_checked(Node, LongOrShortNames),
    Ip = case resolve(Name, Host, Family) of
             {ok, Addr} -> Addr;
             {error, R1} ->
                 ?LOG_INFO("quic_dist cannot resolve ~ts: ~p", [Host, R1],
                           #{}),
                 ?shutdown2(Node, {resolve_failed, Host, R1})
         end,
    dist_util:reset_timer(Timer),
    Port = case port_please(Name, Ip) of
               {port, P, _Version} -> P;
               Other ->
                   ?shutdown2(Node, {epmd_no_port, Name, Other})
           end,
    dist_util:reset_timer(Timer),
    Ep = case endpoint(Family) of
             {ok, E} -> E;
             {error, R2} ->
                 ?LOG_ERROR("quic_dist cannot open its UDP endpoint to connect to ~p: ~ts",
                            [Node, format_reason(R2)], #{}),
                 ?shutdown2(Node, {no_endpoint, R2})
         end,
    quic_dist_cookie:follow(Ep),
    quic_dist_certfiles:follow(Ep),
    Client = quic_dist_cookie:client_for(Ep, Node),
    Ref = make_ref(),
    ok = quic_dist_nif:connect(Ep, Ip, Port, list_to_binary(Host), self(), Ref, Client),
    Overdue = min(?HANDSHAKE_OVERDUE_MS, SetupTime div 2),
    Conn = await_connected(Node, Ip, Port, Ref, Overdue),
    dist_util:reset_timer(Timer),
    case quic_dist_identity:check_subject(Conn, opts()) of
        ok -> ok;
        {error, R4} -> ?shutdown2(Node, R4)
    end,
    {ok, Ctrl} = quic_dist_conn:start(Conn),
    ok = quic_dist_conn:set_supervisor(Ctrl, self()),
    Socket = quic_dist_conn:socket(Ctrl),
    HSData = (hs_data(Kernel, MyNode, Socket, Timer))#hs_data{other_node = Node,
                                                              request_type = Type},
    dist_util:handshake_we_started(HSData).

%% Waits for the QUIC handshake of a connection this node makes. When a firewall drops UDP,
%% nothing ever comes back (while epmd, over TCP, answered): say so once the handshake is
%% overdue (after Overdue ms), then keep waiting; net_kernel's set-up timer ends the attempt as
%% for any carrier.
await_connected(Node, Ip, Port, Ref, Overdue) ->
    receive
        {quic_dist_connected, Ref, Result} -> connected(Node, Ip, Port, Result)
    after Overdue ->
            ?LOG_WARNING("quic_dist: no QUIC handshake with ~p at ~s after ~b ms; if it never "
                         "completes, check that udp port ~b is open between the nodes "
                         "(firewalls and cloud security groups often pass tcp only)",
                         [Node, address_text(Ip, Port), Overdue, Port]),
            await_connected(Node, Ip, Port, Ref, infinity)
    end.

%% The connection, or the set-up's end with the reason logged.
connected(_Node, _Ip, _Port, {ok, Conn}) ->
    Conn;
connected(Node, Ip, Port, {error, Reason}) ->
    ?LOG_WARNING("quic_dist cannot connect to ~p at ~s: ~ts",
                 [Node, address_text(Ip, Port), Reason]),
    ?shutdown2(Node, {connect_failed, Reason}).

%% The node's endpoint: the listening one, or a client-only one of address family Family
%% created on first use (`-dist_listen false').
endpoint(Family) ->
    case persistent_term:get(?ENDPOINT_KEY, undefined) of
        undefined ->
            Opts = quic_dist_opts:get(),
            quic_dist_log:ensure_started(Opts),
            Host = case dist_util:split_node(node()) of
                       {node, _, H} -> H;
                       _ -> element(2, inet:gethostname())
                   end,
            Ip = maps:get(ip, Opts, any_address(Family)),
            Opened = case check_family("option ip", Ip, Family) of
                         ok -> open_endpoint(Ip, 0, false, quic_dist_opts:tls(Opts, Host), Opts);
                         Refused -> Refused
                     end,
            case Opened of
                {ok, Ep} ->
                    persistent_term:put(?ENDPOINT_KEY, Ep),
                    persistent_term:put(?OPTS_KEY, Opts),
                    persistent_term:put(?FAMILY_KEY, Family),
                    log_mode("client only (not listening)", Opts),
                    {ok, Ep};
                Error ->
                    Error
            end;
        Ep ->
            {ok, Ep}
    end.

%% Loads ?CONNECTION_MODULES in the background once the endpoint is open (listening or client
%% only), so that the node's first connection does not wait for the code server.
preload_connection_modules() ->
    _ = spawn(fun() -> code:ensure_modules_loaded(?CONNECTION_MODULES) end),
    ok.

%% Makes the carrier's modules sticky, as kernel's (inet_tcp_dist's) are: reloading one under
%% a live distribution (`l(quic_dist_nif)', `code:load_file/1') is then refused with
%% `{error, sticky_directory}'. Accepted, a reload of quic_dist_nif left the stubs without
%% their NIF (the library cannot be upgraded in place) and ended every connection at its next
%% call; a reload of another of them, at the purge that follows. Only the Erlang carrier
%% modules of this module's directory (`code:stick_mod/1', exported though undocumented): the
%% Elixir modules and test helpers a Mix build puts beside them stay reloadable.
stick_code() ->
    case code:which(?MODULE) of
        Beam when is_list(Beam) ->
            case erl_prim_loader:list_dir(filename:dirname(Beam)) of
                {ok, Files} ->
                    Mods = [list_to_atom(filename:basename(F, ".beam"))
                            || F <- Files, filename:extension(F) =:= ".beam",
                               lists:prefix("quic_dist", F) orelse lists:prefix("quic6_dist", F)],
                    try [code:stick_mod(M) || M <- Mods], ok
                    catch error:undef -> ok
                    end;
                error ->
                    ok
            end;
        _ ->
            ok
    end.

%% @private The modules loaded when the node opens its endpoint (see ?CONNECTION_MODULES).
-spec connection_modules() -> [module()].
connection_modules() ->
    ?CONNECTION_MODULES.

%%% ------------------------------------------------------------------
%%% Handshake data shared by both sides
%%% ------------------------------------------------------------------

%% The hs_data record: every fun works on the {quic_dist, Ctrl, Input, Conn} socket.
hs_data(Kernel, MyNode, Socket, Timer) ->
    #hs_data{kernel_pid = Kernel,
             this_node = MyNode,
             socket = Socket,
             timer = Timer,
             this_flags = 0,
             f_send = fun quic_dist_conn:hs_send/2,
             f_recv = fun quic_dist_conn:hs_recv/3,
             f_setopts_pre_nodeup = fun(_) -> ok end,
             f_setopts_post_nodeup = fun(_) -> ok end,
             f_getll = fun quic_dist_conn:getll/1,
             f_address = fun net_address/2,
             f_handshake_complete = fun quic_dist_conn:handshake_complete/3,
             mf_tick = fun quic_dist_conn:tick/1,
             mf_getstat = fun quic_dist_conn:getstat/1,
             mf_setopts = fun(_Socket, _Opts) -> ok end,
             mf_getopts = fun(_Socket, _Opts) -> {ok, []} end,
             reject_flags = reject_flags(data_streams())}.

%% Several streams reorder packets of unrelated processes, which the atom cache (whose
%% references assume connection order) does not allow; the peer then sends without it too.
reject_flags(1) -> 0;
reject_flags(_Streams) -> dist_util:strict_order_flags().

%% The #net_address{} of a connected peer.
net_address(Socket, Node) ->
    {Ip, Port} = quic_dist_conn:remote_address(Socket),
    Host = case dist_util:split_node(Node) of
               {node, _, H} -> H;
               _ -> inet:ntoa(Ip)
           end,
    #net_address{address = {Ip, Port}, host = Host, protocol = ?PROTOCOL, family = family()}.

%%% ------------------------------------------------------------------
%%% Helpers
%%% ------------------------------------------------------------------

%% Ports to try, in order: the `port' option; the port the epmd module fixes for every node
%% (erl_epmd: `-erl_epmd_port P', which runs nodes without epmd and makes them dial P too; or
%% a custom -epmd_module's listen_port_please/2), as inet_tcp_dist asks it; the range
%% inet_dist_listen_min..max; any.
port_candidates(Name, Host, Opts) ->
    case maps:find(port, Opts) of
        {ok, Port} -> [Port];
        error ->
            case epmd_listen_port(Name, Host) of
                {ok, Fixed} when Fixed > 0 -> [Fixed];
                _ -> listen_port_range()
            end
    end.

%% {ok, Port} fixed by the epmd module for this node, {ok, 0} if none.
epmd_listen_port(Name, Host) ->
    Mod = net_kernel:epmd_module(),
    _ = code:ensure_loaded(Mod),
    case erlang:function_exported(Mod, listen_port_please, 2) of
        true -> Mod:listen_port_please(Name, Host);
        false -> erl_epmd:listen_port_please(Name, Host)
    end.

%% inet_dist_listen_min..max, or [0] (any port).
listen_port_range() ->
    case {application:get_env(kernel, inet_dist_listen_min),
          application:get_env(kernel, inet_dist_listen_max)} of
        {{ok, Min}, {ok, Max}} when Max >= Min -> lists:seq(Min, Max);
        {{ok, Min}, _} -> [Min];
        _ -> [0]
    end.

open_listen_endpoint(Opts, Host, Family, Ports) ->
    {Source, Ip} = listen_ip(Opts, Family),
    case {persistent_term:get(?ENDPOINT_KEY, undefined), check_family(Source, Ip, Family)} of
        {undefined, ok} ->
            try quic_dist_opts:tls(Opts, Host) of
                Tls -> open_listen_endpoint(Opts, Tls, Ip, Ports, {error, no_port})
            catch
                error:Reason -> {error, Reason}
            end;
        {undefined, Refused} ->
            Refused;
        {_Open, _} ->
            {error, already_open}
    end.

%% ok if Ip (from Source: an option's name) is an address of Family, else why not.
check_family(Source, Ip, Family) ->
    case family_of(Ip) of
        Family -> ok;
        _ -> {error, iolist_to_binary(
                       io_lib:format("~s ~s is not an ~s address (~s)",
                                     [Source, inet:ntoa(Ip), family_name(Family),
                                      proto_dist(Family)]))}
    end.

open_listen_endpoint(_Opts, _Tls, _Ip, [], LastError) ->
    LastError;
open_listen_endpoint(Opts, Tls, Ip, [Port | Rest], _LastError) ->
    case open_endpoint(Ip, Port, true, Tls, Opts) of
        {ok, Ep} -> {ok, Ep, Ip};
        {error, _} = Error -> open_listen_endpoint(Opts, Tls, Ip, Rest, Error)
    end.

%% Binds the node's UDP endpoint and starts the processes that read its socket.
open_endpoint(Ip, Port, Listen, Tls, Opts) ->
    case quic_dist_nif:endpoint_open(Ip, Port, Listen, Tls, quic_dist_opts:transport(Opts)) of
        {ok, Ep} ->
            quic_dist_cookie:track(Tls, Opts),
            quic_dist_certfiles:track(Opts),
            {ok, _} = quic_dist_receiver:start(Ep, quic_dist_opts:poll_us(Opts)),
            preload_connection_modules(),
            stick_code(),
            {ok, Ep};
        Error ->
            Error
    end.

%% Says once, visibly, which trust mode the node uses.
log_mode(What, Opts) ->
    Mode = quic_dist_opts:describe_mode(Opts),
    Level = case maps:get(insecure, Opts, false) of
                true -> warning;
                _ -> notice
            end,
    quic_dist_log:log_when_ready(Level, "quic_dist ~ts; ~ts", [What, Mode]).

%% @doc Loads the certificate files again now (certificate mode), for example right after a
%% renewal; the node also notices changed files by itself (when it connects to a node, and
%% every 10 s for the connections it accepts). New connections use
%% the new certificate, connections already up keep theirs. `{error, Reason}' leaves the node
%% with the certificate it has.
-spec reload_certificates() -> ok | {error, term()}.
reload_certificates() ->
    case persistent_term:get(?ENDPOINT_KEY, undefined) of
        undefined -> {error, not_distributed};
        Ep -> quic_dist_certfiles:reload(Ep)
    end.

%% @doc The carrier's own memory outside the BEAM (quinn, TLS, buffers), which
%% `erlang:memory/0' does not include: `#{allocated => Bytes, peak => Bytes}'.
-spec nif_memory() -> #{allocated := non_neg_integer(), peak := non_neg_integer()}.
nif_memory() ->
    quic_dist_nif:nif_memory().

%% @doc Bytes a local process may have waiting in its mailbox from one peer before that peer's
%% stream is paused (option `mailbox_limit'; 0: never).
-spec mailbox_limit() -> non_neg_integer().
mailbox_limit() ->
    quic_dist_opts:mailbox_limit(opts()).

%% @doc Data streams this node sends on (option `streams').
-spec data_streams() -> 1..64.
data_streams() ->
    quic_dist_opts:streams(opts()).

%% Options in force (set when the endpoint was opened).
opts() ->
    persistent_term:get(?OPTS_KEY, #{}).

%% The address family of the node's endpoint (inet until one is open).
family() ->
    persistent_term:get(?FAMILY_KEY, inet).

%% The address to listen on and where it came from: option ip, else the kernel's
%% inet_dist_use_interface, else every interface of the family.
listen_ip(#{ip := Ip}, _Family) ->
    {"option ip", Ip};
listen_ip(_Opts, Family) ->
    case application:get_env(kernel, inet_dist_use_interface) of
        {ok, Ip} when tuple_size(Ip) =:= 4; tuple_size(Ip) =:= 8 ->
            {"kernel inet_dist_use_interface", Ip};
        _ ->
            {"", any_address(Family)}
    end.

any_address(inet) -> {0, 0, 0, 0};
any_address(inet6) -> {0, 0, 0, 0, 0, 0, 0, 0}.

family_of(Ip) when tuple_size(Ip) =:= 4 -> inet;
family_of(Ip) when tuple_size(Ip) =:= 8 -> inet6.

family_name(inet) -> "IPv4";
family_name(inet6) -> "IPv6".

proto_dist(inet) -> "-proto_dist quic";
proto_dist(inet6) -> "-proto_dist quic6".

%% "Ip:Port", with the IPv6 address in brackets.
address_text(Ip, Port) when tuple_size(Ip) =:= 8 ->
    io_lib:format("[~s]:~b", [inet:ntoa(Ip), Port]);
address_text(Ip, Port) ->
    io_lib:format("~s:~b", [inet:ntoa(Ip), Port]).

%% epmd is told the family through the TCP carrier's module name, as inet6_tcp_dist does.
register_with_epmd(Name, Port, Family) ->
    Mod = net_kernel:epmd_module(),
    _ = code:ensure_loaded(Mod),
    Driver = case Family of
                 inet -> inet_tcp;
                 inet6 -> inet6_tcp
             end,
    case erlang:function_exported(Mod, register_node, 3) of
        true -> Mod:register_node(Name, Port, Driver);
        false -> Mod:register_node(Name, Port)
    end.

resolve(Name, Host, Family) ->
    Mod = net_kernel:epmd_module(),
    _ = code:ensure_loaded(Mod),
    Literal = case Family of
                  inet -> inet:parse_ipv4strict_address(Host);
                  inet6 -> inet:parse_ipv6strict_address(Host)
              end,
    Result = case {Mod, Literal} of
                 %% An address needs no resolver (whose first use starts a port program: 2 ms
                 %% and more of a node's first connection); erl_epmd would ask it anyway.
                 {erl_epmd, {ok, Address}} -> {ok, Address};
                 _ ->
                     case erlang:function_exported(Mod, address_please, 3) of
                         true -> Mod:address_please(Name, Host, Family);
                         false -> inet:getaddr(Host, Family)
                     end
             end,
    case Result of
        {ok, Ip} -> {ok, Ip};
        {ok, Ip, _Port, _Version} -> {ok, Ip};
        Error -> Error
    end.

port_please(Name, Ip) ->
    Mod = net_kernel:epmd_module(),
    _ = code:ensure_loaded(Mod),
    case erlang:function_exported(Mod, port_please, 3) of
        true -> Mod:port_please(Name, Ip, 5000);
        false -> Mod:port_please(Name, Ip)
    end.

%% Name and host of Node, refusing names that do not fit -name / -sname.
split_node_checked(Node, LongOrShortNames) ->
    case dist_util:split_node(Node) of
        {node, Name, Host} ->
            case {LongOrShortNames, lists:member($., Host), inet:parse_address(Host)} of
                {longnames, false, {error, _}} ->
                    ?LOG_ERROR("quic_dist: ~p is not a long node name (-name needs a "
                               "fully qualified host or an IP address)", [Node],
                               #{}),
                    ?shutdown2(Node, {illegal_node_name, Node});
                {shortnames, true, _} ->
                    ?LOG_ERROR("quic_dist: ~p is not a short node name", [Node],
                               #{}),
                    ?shutdown2(Node, {illegal_node_name, Node});
                _ ->
                    [Name, Host]
            end;
        _ ->
            ?shutdown2(Node, {illegal_node_name, Node})
    end.

format_reason(R) when is_binary(R) -> R;
format_reason(R) -> io_lib:format("~p", [R]).
