%%% @doc Test support for the quic_dist multi-node suite.
%%%
%%% 1. Real BEAM nodes, started with `peer' (OTP 25) and controlled over their standard I/O, so
%%%    the test runner itself is not distributed. Each node runs the QUIC carrier with the flags
%%%    of `make -s print-erl-flags' (environment variable QUIC_DIST_ERL_FLAGS) and has this
%%%    directory's ebin on its code path, so test helpers can run on it.
%%%    Every node belongs to a registry (an ETS table owned by the EUnit fixture); `cleanup/1'
%%%    stops all of them and kills with SIGKILL any OS process that is still there.
%%% 2. Helpers that run on a node (through `call/4,5'): an event watcher that collects
%%%    nodeup/nodedown messages, and a wait for a connection to appear.
%%% 3. An EUnit listener (`{report, {quic_dist_test_peers, [{counts_file, F}]}}') that writes
%%%    `PASSED FAILED SKIPPED' to F for the test runner (cancelled tests and timeouts count as
%%%    failed). EUnit itself has no way for a test to say "skipped": a test that cannot run
%%%    here (no root, a tool missing) calls `skip(Reason)' and returns (`skipped_test/2' makes
%%%    such a test); EUnit counts it as passed, and this listener moves it to the skipped count.
-module(quic_dist_test_peers).

%% Nodes.
-export([new_registry/0, cleanup/1,
         start/2, start_many/2, unique_name/1,
         call/4, call/5, connect/2, cast/4, nodename/1, os_pid/1, kill/1, stop/1,
         erl_flags/0, erl_flags/1, default_cookie/0, skip/1, skipped_test/2]).
%% Run on a node.
-export([watch/2, wait_event/3, events/1, wait_connected/2, wait_disconnected/2]).
%% EUnit listener.
-behaviour(eunit_listener).
-export([start/1, init/1, handle_begin/3, handle_end/3, handle_cancel/3, terminate/2]).

-define(BOOT_TIMEOUT, 30000).
-define(CALL_TIMEOUT, 30000).
-define(STOP_WAIT_S, 5).
%% Named ETS table, owned by the listener: one row per skipped test.
-define(SKIPS, quic_dist_test_skips).

-type peer() :: #{peer := pid(), node := node(), os_pid := string(), name := string()}.
-export_type([peer/0]).

%%% ------------------------------------------------------------------
%%% Registry and cleanup
%%% ------------------------------------------------------------------

%% @doc A registry of started nodes, owned by the caller (an EUnit setup function).
-spec new_registry() -> ets:tid().
new_registry() ->
    ets:new(quic_dist_test_peers, [public, set]).

%% @doc Stops every node of the registry, then SIGKILLs any OS process left over.
-spec cleanup(ets:tid()) -> ok.
cleanup(Reg) ->
    Peers = [P || {_, P} <- ets:tab2list(Reg)],
    %% Closing the control channel makes each node halt; peer:stop/1 does not wait for the
    %% OS process, so wait for it (bounded), and kill what did not go.
    lists:foreach(fun(#{peer := Pid}) -> catch peer:stop(Pid) end, Peers),
    lists:foreach(fun(P) -> ensure_os_process_gone(P) end, Peers),
    ets:delete(Reg),
    ok.

ensure_os_process_gone(#{os_pid := OsPid, name := Name}) ->
    case is_our_process(OsPid, Name) of
        false -> ok;
        true ->
            %% `tail --pid' returns soon after the process exits (it checks every 50 ms).
            _ = os:cmd(io_lib:format("timeout ~b tail --pid=~s -s 0.05 -f /dev/null",
                                     [?STOP_WAIT_S, OsPid])),
            case is_our_process(OsPid, Name) of
                true -> _ = os:cmd("kill -9 " ++ OsPid), ok;
                false -> ok
            end
    end.

%% True if OsPid is still a process whose command line names our node (pids get reused).
is_our_process(OsPid, Name) ->
    case file:read_file("/proc/" ++ OsPid ++ "/cmdline") of
        {ok, Cmdline} -> binary:match(Cmdline, list_to_binary(Name ++ "@")) =/= nomatch;
        {error, _} -> false
    end.

%%% ------------------------------------------------------------------
%%% Starting and controlling nodes
%%% ------------------------------------------------------------------

%% @doc A node name unique to this run: qdt_Prefix_OsPid_N.
-spec unique_name(string()) -> string().
unique_name(Prefix) ->
    lists:flatten(io_lib:format("qdt_~s_~s_~b",
                                [Prefix, os:getpid(), erlang:unique_integer([positive])])).

%% @doc Starts a node over QUIC. Options (all optional):
%% `name' (exact node name; default a unique name from `prefix'), `prefix' (default "n"),
%% `cookie' (atom or string; default one per test run, see default_cookie/0), `ticktime'
%% (net_ticktime, default 60), `args' (extra erl arguments), `host' (the host part of the
%% node name, default "127.0.0.1"), `netns' (a network namespace: the node runs under
%% `ip netns exec NETNS'), `carrier' (`quic', the default, `quic6' for the carrier over
%% IPv6, or `tcp' for OTP's own inet_tcp_dist, to compare with), `shortnames' (true: -sname,
%% with `host' a short host name), `distributed' (false: the node starts without a name, and
%% distribution when the test starts it; the name is then only a marker for cleanup).
-spec start(ets:tid(), map()) -> peer().
start(Reg, Opts) ->
    Name = case maps:find(name, Opts) of
               {ok, N} -> N;
               error -> unique_name(maps:get(prefix, Opts, "n"))
           end,
    Cookie = case maps:find(cookie, Opts) of
                 {ok, C} -> to_list(C);
                 error -> default_cookie()
             end,
    Tick = integer_to_list(maps:get(ticktime, Opts, 60)),
    TestEbin = filename:dirname(code:which(?MODULE)),
    Carrier = maps:get(carrier, Opts, quic),
    CarrierFlags = case Carrier of
                       quic -> erl_flags();
                       quic6 -> erl_flags(["quic6"]);
                       tcp -> []
                   end,
    Args = CarrierFlags ++
        ["-setcookie", Cookie,
         "-pa", TestEbin,
         "-kernel", "net_ticktime", Tick,
         %% Warnings and errors only: each node's output is copied into the test output.
         "-kernel", "logger_level", "warning"]
        ++ maps:get(args, Opts, []),
    Exec = case maps:find(netns, Opts) of
               {ok, Ns} ->
                   #{exec => {os:find_executable("ip"),
                              ["netns", "exec", Ns, os:find_executable("erl")]}};
               error ->
                   #{}
           end,
    Naming = case maps:get(distributed, Opts, true) of
                 true ->
                     #{name => Name, host => maps:get(host, Opts, "127.0.0.1"),
                       longnames => not maps:get(shortnames, Opts, false), args => Args};
                 false ->
                     %% The marker lets cleanup find the OS process by its command line.
                     #{args => Args ++ ["-qdt_marker", Name ++ "@"]}
             end,
    {ok, Pid, Node} = peer:start(maps:merge(Exec#{connection => standard_io,
                                                  wait_boot => ?BOOT_TIMEOUT}, Naming)),
    OsPid = peer:call(Pid, os, getpid, [], ?CALL_TIMEOUT),
    Peer = #{peer => Pid, node => Node, os_pid => OsPid, name => Name},
    true = ets:insert(Reg, {Pid, Peer}),
    %% The carrier really is the one asked for: nothing else would do on this node.
    ProtoDist = case Carrier of
                    tcp -> error;
                    _ -> {ok, [[atom_to_list(Carrier)]]}
                end,
    ProtoDist = peer:call(Pid, init, get_argument, [proto_dist], ?CALL_TIMEOUT),
    Peer.

%% @doc Starts several nodes in parallel (node start-up is mostly waiting).
-spec start_many(ets:tid(), [map()]) -> [peer()].
start_many(Reg, OptsList) ->
    Parent = self(),
    Workers = [spawn_monitor(fun() -> Parent ! {self(), started, start(Reg, Opts)} end)
               || Opts <- OptsList],
    [receive
         {W, started, Peer} -> demonitor(M, [flush]), Peer;
         {'DOWN', M, process, W, Reason} -> error({peer_start_failed, Reason})
     end || {W, M} <- Workers].

%% @doc Calls M:F(A) on the node (30 s timeout).
-spec call(peer(), module(), atom(), list()) -> term().
call(Peer, M, F, A) ->
    call(Peer, M, F, A, ?CALL_TIMEOUT).

-spec call(peer(), module(), atom(), list(), timeout()) -> term().
call(#{peer := Pid}, M, F, A, Timeout) ->
    peer:call(Pid, M, F, A, Timeout).

%% @doc Connects node From to node To; fails unless net_kernel:connect_node/1 returns true.
-spec connect(peer(), peer()) -> ok.
connect(From, To) ->
    case call(From, net_kernel, connect_node, [nodename(To)]) of
        true -> ok;
        Other -> error({connect_failed, nodename(From), nodename(To), Other})
    end.

%% @doc Runs M:F(A) on the node without waiting for a result.
-spec cast(peer(), module(), atom(), list()) -> ok.
cast(#{peer := Pid}, M, F, A) ->
    peer:cast(Pid, M, F, A).

-spec nodename(peer()) -> node().
nodename(#{node := Node}) -> Node.

-spec os_pid(peer()) -> string().
os_pid(#{os_pid := OsPid}) -> OsPid.

%% @doc SIGKILLs the node's OS process and returns once its peer controller has seen it exit.
-spec kill(peer()) -> ok.
kill(#{peer := Pid, os_pid := OsPid}) ->
    Mon = monitor(process, Pid),
    _ = os:cmd("kill -9 " ++ OsPid),
    receive
        {'DOWN', Mon, process, Pid, _} -> ok
    after 10000 ->
            error({peer_still_running_after_kill, OsPid})
    end.

%% @doc Stops the node (closes its control channel: the node halts).
-spec stop(peer()) -> ok.
stop(#{peer := Pid} = Peer) ->
    catch peer:stop(Pid),
    ensure_os_process_gone(Peer).

%% @doc The carrier's erl flags from QUIC_DIST_ERL_FLAGS, as a list of arguments.
-spec erl_flags() -> [string()].
erl_flags() ->
    case os:getenv("QUIC_DIST_ERL_FLAGS") of
        false -> error({not_set, "QUIC_DIST_ERL_FLAGS (set it from `make -s print-erl-flags')"});
        Flags -> string:lexemes(Flags, " \t\n")
    end.

%% @doc The cookie of this test run's nodes: unique to the run, so that other runs sharing this
%% machine's epmd cannot talk to them (with the cookie-derived CA mode, not even at TLS level).
-spec default_cookie() -> string().
default_cookie() ->
    lists:flatten(io_lib:format("qdt_~s_~b", [os:getpid(),
                                             erlang:phash2(erlang:system_info(start_time))])).

%% @doc erl_flags/0 with the carriers Protos (e.g. ["quic6"]) after -proto_dist.
-spec erl_flags([string()]) -> [string()].
erl_flags(Protos) ->
    proto_dist(erl_flags(), Protos).

proto_dist(["-proto_dist", _ | Rest], Protos) -> ["-proto_dist" | Protos] ++ Rest;
proto_dist([Flag | Rest], Protos) -> [Flag | proto_dist(Rest, Protos)];
proto_dist([], _Protos) -> [].

to_list(A) when is_atom(A) -> atom_to_list(A);
to_list(L) when is_list(L) -> L.

%%% ------------------------------------------------------------------
%%% Helpers that run on a node
%%% ------------------------------------------------------------------

%% @doc Starts a registered process that subscribes to `What' and records every message it
%% gets: `{monitor_node, Node}' (erlang:monitor_node/2), `monitor_nodes'
%% (net_kernel:monitor_nodes/2 with nodedown_reason). Returns once subscribed.
-spec watch(atom(), [term()]) -> pid().
watch(Name, What) ->
    Parent = self(),
    Ref = make_ref(),
    Pid = spawn(fun() ->
                        true = register(Name, self()),
                        lists:foreach(fun subscribe/1, What),
                        Parent ! {Ref, subscribed},
                        watch_loop([], [])
                end),
    receive {Ref, subscribed} -> Pid
    after 10000 -> error(watch_start_timeout)
    end.

subscribe({monitor_node, Node}) -> true = erlang:monitor_node(Node, true);
subscribe(monitor_nodes) -> ok = net_kernel:monitor_nodes(true, [nodedown_reason]).

%% Events: newest first, as {MonotonicMs, Msg}. Waiters: {From, Ref, Pattern}.
watch_loop(Events, Waiters) ->
    receive
        {'$qdt_wait', From, Ref, Pattern} ->
            case find(Pattern, lists:reverse(Events)) of
                {ok, Msg} -> From ! {Ref, {ok, Msg}}, watch_loop(Events, Waiters);
                error -> watch_loop(Events, [{From, Ref, Pattern} | Waiters])
            end;
        {'$qdt_events', From, Ref} ->
            From ! {Ref, [M || {_, M} <- lists:reverse(Events)]},
            watch_loop(Events, Waiters);
        Msg ->
            Events1 = [{erlang:monotonic_time(millisecond), Msg} | Events],
            Waiters1 = lists:filter(fun({From, Ref, Pattern}) ->
                                            case match(Pattern, Msg) of
                                                true -> From ! {Ref, {ok, Msg}}, false;
                                                false -> true
                                            end
                                    end, Waiters),
            watch_loop(Events1, Waiters1)
    end.

find(Pattern, [{_, Msg} | Rest]) ->
    case match(Pattern, Msg) of
        true -> {ok, Msg};
        false -> find(Pattern, Rest)
    end;
find(_Pattern, []) ->
    error.

%% '_' matches anything; tuples and lists element by element; anything else exactly.
match('_', _) -> true;
match(P, T) when is_tuple(P), is_tuple(T), tuple_size(P) =:= tuple_size(T) ->
    match(tuple_to_list(P), tuple_to_list(T));
match([P | Ps], [T | Ts]) -> match(P, T) andalso match(Ps, Ts);
match(P, T) -> P =:= T.

%% @doc Waits up to Timeout ms for the watcher to have a message matching Pattern.
%% Returns `{ok, Msg, WaitedMs}' or `{timeout, AllEvents}'.
-spec wait_event(atom(), term(), timeout()) -> {ok, term(), integer()} | {timeout, [term()]}.
wait_event(Name, Pattern, Timeout) ->
    T0 = erlang:monotonic_time(millisecond),
    Ref = make_ref(),
    Name ! {'$qdt_wait', self(), Ref, Pattern},
    receive
        {Ref, {ok, Msg}} -> {ok, Msg, erlang:monotonic_time(millisecond) - T0}
    after Timeout ->
            {timeout, events(Name)}
    end.

%% @doc Every message the watcher got, oldest first.
-spec events(atom()) -> [term()].
events(Name) ->
    Ref = make_ref(),
    Name ! {'$qdt_events', self(), Ref},
    receive {Ref, Events} -> Events after 5000 -> error(watcher_not_answering) end.

%% @doc Waits up to Timeout ms until Node is connected (visible or hidden).
-spec wait_connected(node(), timeout()) -> ok | timeout.
wait_connected(Node, Timeout) ->
    wait_node(Node, Timeout, true).

%% @doc Waits up to Timeout ms until Node is no longer connected.
-spec wait_disconnected(node(), timeout()) -> ok | timeout.
wait_disconnected(Node, Timeout) ->
    wait_node(Node, Timeout, false).

wait_node(Node, Timeout, Up) ->
    ok = net_kernel:monitor_nodes(true, [{node_type, all}]),
    Result = case lists:member(Node, nodes(connected)) of
                 Up -> ok;
                 _ when Up ->
                     receive {nodeup, Node, _} -> ok after Timeout -> timeout end;
                 _ ->
                     receive {nodedown, Node, _} -> ok after Timeout -> timeout end
             end,
    ok = net_kernel:monitor_nodes(false, [{node_type, all}]),
    Result.

%%% ------------------------------------------------------------------
%%% EUnit listener: writes "PASSED FAILED SKIPPED" for the runner
%%% ------------------------------------------------------------------

%% @private
start(Options) ->
    eunit_listener:start(?MODULE, Options).

%% @private
init(Options) ->
    %% skip/1 records here (the listener runs in the same VM as the tests).
    _ = ets:new(?SKIPS, [named_table, public, set]),
    #{counts_file => proplists:get_value(counts_file, Options), failures => []}.

%% @private
handle_begin(_Kind, _Data, St) -> St.

%% @private
%% A failed test is remembered by name, so that the runner can name it on its last lines
%% (CI shows only the tail of the output).
handle_end(test, Data, St) ->
    case proplists:get_value(status, Data) of
        {error, {_Class, Term, _Stack}} -> add_failure(Data, Term, St);
        {error, Other} -> add_failure(Data, Other, St);
        _ -> St
    end;
handle_end(_Kind, _Data, St) -> St.

%% @private
handle_cancel(_Kind, Data, St) ->
    case proplists:get_value(reason, Data) of
        %% A group cancelled because one of its tests was: that test is named already.
        undefined -> St;
        {blame, _} -> St;
        {timeout, _} -> add_failure(Data, "timed out", St);
        Reason -> add_failure(Data, {cancelled, Reason}, St)
    end.

%% @private
terminate({ok, Data}, #{counts_file := File, failures := Failures}) ->
    Skipped = length(ets:tab2list(?SKIPS)),
    %% A skipped test returned normally: EUnit counted it as passed.
    Pass = max(0, proplists:get_value(pass, Data, 0) - Skipped),
    Fail = proplists:get_value(fail, Data, 0) + proplists:get_value(cancel, Data, 0),
    Skip = proplists:get_value(skip, Data, 0) + Skipped,
    Whys = lists:foldl(fun({_, Why}, Acc) -> maps:update_with(Why, fun(N) -> N + 1 end, 1, Acc) end,
                       #{}, ets:tab2list(?SKIPS)),
    %% One write, so that it does not interleave with EUnit's own summary.
    io:put_chars([io_lib:format("quic_dist_test_peers: ~b passed, ~b failed (with cancelled), "
                                "~b skipped~n", [Pass, Fail, Skip]) |
                  [io_lib:format("  skipped (~b): ~ts~n", [N, Why])
                   || {Why, N} <- lists:sort(maps:to_list(Whys))]]),
    write_failures(File, lists:reverse(Failures)),
    write_counts(File, io_lib:format("~b ~b ~b~n", [Pass, Fail, Skip]));
terminate({error, Reason}, #{counts_file := File, failures := Failures}) ->
    write_failures(File, lists:reverse(Failures, [io_lib:format("eunit: ~0tP", [Reason, 8])])),
    write_counts(File, "0 1 0\n").

%% One line per failed or cancelled test or group: its name and the start of its error.
add_failure(Data, Why, #{failures := Failures} = St) ->
    Name = case {proplists:get_value(source, Data), proplists:get_value(desc, Data)} of
               {{M, F, _A}, undefined} -> io_lib:format("~s:~s", [M, F]);
               {{M, F, _A}, Desc} -> io_lib:format("~s:~s \"~ts\"", [M, F, Desc]);
               {_, undefined} -> "(a test group)";
               {_, Desc} -> io_lib:format("~ts", [Desc])
           end,
    Line = case proplists:get_value(line, Data, 0) of
               0 -> "";
               L -> io_lib:format(" (line ~b)", [L])
           end,
    Text = case io_lib:char_list(Why) of
               true -> Why;
               false -> string:slice(lists:flatten(io_lib:format("~0tP", [Why, 12])), 0, 300)
           end,
    St#{failures := [[Name, Line, ": ", Text] | Failures]}.

%% The failures go to COUNTS_FILE with ".failures" in place of ".counts" (none: no file).
write_failures(undefined, _Failures) ->
    ok;
write_failures(File, Failures) ->
    Path = filename:rootname(File) ++ ".failures",
    ok = filelib:ensure_dir(Path),
    _ = file:delete(Path),
    case Failures of
        [] -> ok;
        _ -> ok = file:write_file(Path, [[unicode:characters_to_binary(F), $\n] || F <- Failures])
    end.

%% @doc Marks the calling test as skipped (it must return normally right after): the listener
%% counts it as skipped instead of passed, and lists the reason at the end.
-spec skip(iodata()) -> ok.
skip(Reason) ->
    Text = unicode:characters_to_binary(Reason),
    try ets:insert(?SKIPS, {erlang:unique_integer(), Text}) of
        true -> ok
    catch
        %% Not under this listener (e.g. eunit:test/1 from a shell): printed only.
        error:badarg -> io:format(user, "~n    SKIPPED: ~ts ", [Text])
    end.

%% @doc An EUnit test that skips: its title says so and why.
-spec skipped_test(string(), string()) -> {string(), fun(() -> ok)}.
skipped_test(Title, Why) ->
    {lists:flatten([Title, " [SKIPPED: ", Why, "]"]), fun() -> skip(Why) end}.

write_counts(undefined, _Line) ->
    ok;
write_counts(File, Line) ->
    ok = filelib:ensure_dir(File),
    ok = file:write_file(File, Line).
