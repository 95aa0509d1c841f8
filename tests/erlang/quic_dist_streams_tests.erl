%%% @doc Multi-node tests of quic_dist's data streams (issue 4): Erlang's ordering guarantee
%%% (signals from one process to another are never reordered) holds when packets of different
%%% processes travel on different QUIC streams, and a large message between two processes does
%%% not hold up the messages of others (no head-of-line blocking).
%%%
%%% Real nodes, started with `peer' (see quic_dist_test_peers); the work runs on the nodes in
%%% the functions at the end of this module. Synchronisation is by messages and monitors;
%%% `receive ... after' only bounds how long a failure may take.
-module(quic_dist_streams_tests).

-include_lib("eunit/include/eunit.hrl").

%% Run on the nodes.
-export([memory/0, start_flood/3, wait_stuck/1, wait_flood_done/1, many_senders/4, order_receiver/4, signal_pairs/3, head_of_line/2, stream_counts/1,
         pings_beside_stream/3, small_burst/2, large_messages/1, priorities_after_pings/2,
         start_spinners/1, input_priority_during_bulk/2, watch_priority/3]).

-define(P, quic_dist_test_peers).
-define(BIG, (100 * 1024)).          % above 64 KiB: fragmented
-define(HOL_SIZE, (256 * 1024 * 1024)).

%%% ------------------------------------------------------------------
%%% Test generators
%%% ------------------------------------------------------------------

streams_test_() ->
    [pair("64 senders x 10 000 messages of mixed sizes to 4 receivers: each sender's order kept",
          180, [], fun t_many_senders/1),
     pair("a burst of small messages arrives intact, and a received binary keeps at most 16 KiB "
          "alive", 60, [], fun t_small_burst/1),
     pair("messages of 3 to 65 MiB arrive intact; those the carrier joins from their fragments "
          "are decoded in place from its binary, which keeps at most one fragment more alive",
          120, [], fun t_large_messages/1),
     pair("messages, then exit: links, monitors and monitors by name report after the messages",
          120, [], fun t_signals/1),
     pair("a small message overtakes a 256 MiB message between another pair", 180, [],
          fun t_no_head_of_line/1),
     pair("ping-pong beside a stream of 8 MiB messages, the pinger started before and after "
          "the streamer: a round trip does not wait for a bulk message", 120, [],
          fun t_pings_beside_stream/1),
     pair("a receiver that does not read its mailbox while 2 GB are sent to it: the sender "
          "is suspended, memory stays bounded, and it goes on once the receiver is gone", 180,
          [], fun t_slow_receiver/1),
     pair("streams 1: everything on the control stream, in order", 60,
          ["-quic_dist_opt", "streams", "1"], fun t_one_stream/1),
     pair("congestion bbr instead of cubic: the same traffic gets through", 60,
          ["-quic_dist_opt", "congestion", "bbr"], fun t_bbr/1),
     pair("a node's schedulers busy with normal work: its controller and input handler run "
          "at high priority for small messages (they go ahead as TCP's port I/O does), at "
          "normal priority during 64 MiB of bulk data, and high again after", 60, [],
          fun t_priorities/1)].

pair(Title, Secs, Args, Fun) ->
    {Title, {setup,
             fun() ->
                     Reg = ?P:new_registry(),
                     try ?P:start_many(Reg, [#{prefix => "sa", args => Args},
                                             #{prefix => "sb", args => Args}]) of
                         [A, B] -> #{reg => Reg, a => A, b => B}
                     catch
                         Class:Reason:Stack ->
                             ?P:cleanup(Reg),
                             erlang:raise(Class, Reason, Stack)
                     end
             end,
             fun(#{reg := Reg}) -> ?P:cleanup(Reg) end,
             fun(Ctx) -> {timeout, Secs, fun() -> Fun(Ctx) end} end}}.

%%% ------------------------------------------------------------------
%%% Tests
%%% ------------------------------------------------------------------

t_many_senders(#{a := A, b := B}) ->
    ?P:connect(A, B),
    Result = ?P:call(A, ?MODULE, many_senders, [?P:nodename(B), 64, 10000, 4], 170000),
    ?assertMatch({ok, _}, Result),
    {ok, PerReceiver} = Result,
    %% Every receiver got all the messages of its 16 senders, each sender in order.
    ?assertEqual(lists:duplicate(4, {16, 16 * 10000}),
                 [{map_size(Counts), lists:sum(maps:values(Counts))} || Counts <- PerReceiver]),
    %% And they really travelled on several streams.
    {Streams, PeerStreams} = ?P:call(A, ?MODULE, stream_counts, [?P:nodename(B)]),
    ?assertEqual(8, Streams),
    ?assertEqual(8, PeerStreams),
    %% The runtime's own counters and net_kernel's views keep working with several streams.
    {ok, Info} = ?P:call(A, net_kernel, node_info, [?P:nodename(B)]),
    ?assert(proplists:get_value(out, Info) >= 640000),
    ?assert(proplists:get_value(in, Info) > 0),
    ?assertMatch({ok, _}, ?P:call(A, net_kernel, getopts, [?P:nodename(B), [nodelay]])).

t_signals(#{a := A, b := B}) ->
    ?P:connect(A, B),
    Result = ?P:call(A, ?MODULE, signal_pairs, [?P:nodename(B), 100, 50], 110000),
    ?assertEqual(#{monitor => 100, link => 100, monitor_by_name => 100}, Result).

t_no_head_of_line(#{a := A, b := B}) ->
    ?P:connect(A, B),
    {Order, ReceivedAtSmall} =
        ?P:call(A, ?MODULE, head_of_line, [?P:nodename(B), ?HOL_SIZE], 170000),
    ?assertEqual([small, {big, ?HOL_SIZE}], Order),
    io:format(user, "~n    the small message arrived after ~b MiB of the 256 MiB one ",
              [ReceivedAtSmall bsr 20]),
    %% Not just first: well before the end. The small message leaves when 32 MiB have been
    %% sent; nothing but the big message's own bytes ahead of it in some queue (the runtime's
    %% for the node, the carrier's) could make it wait for half of the rest.
    ?assert(ReceivedAtSmall < ?HOL_SIZE div 2).

t_pings_beside_stream(#{a := A, b := B}) ->
    ?P:connect(A, B),
    NB = ?P:nodename(B),
    %% New processes take streams in turn, so one of the two orders puts the pinger on a
    %% stream of higher index than the streamer's. The echo reports how many bulk bytes the
    %% sink had got when each ping came: between two pings (one round trip), a carrier that
    %% made the ping wait behind the stream shows a whole 8 MiB message or more.
    [begin
         Gaps = ?P:call(A, ?MODULE, pings_beside_stream, [NB, Order, 64 * 1024 * 1024],
                        110000),
         ?assert(length(Gaps) >= 20),
         Median = lists:nth(length(Gaps) div 2, lists:sort(Gaps)),
         io:format(user, "~n    ~p: median ~b KiB of the stream per round trip ",
                   [Order, Median bsr 10]),
         ?assert(Median < 8 * 1024 * 1024)
     end || Order <- [pinger_first, streamer_first]].

t_slow_receiver(#{a := A, b := B}) ->
    ?P:connect(A, B),
    NB = ?P:nodename(B),
    Before = #{a => ?P:call(A, ?MODULE, memory, []), b => ?P:call(B, ?MODULE, memory, [])},
    {Sender, Receiver} = ?P:call(A, ?MODULE, start_flood, [NB, 2048, 1024 * 1024]),
    %% Stuck: suspended, and no progress over a second.
    Sent = ?P:call(A, ?MODULE, wait_stuck, [Sender], 90000),
    Stuck = #{a => ?P:call(A, ?MODULE, memory, []), b => ?P:call(B, ?MODULE, memory, [])},
    Queued = ?P:call(B, erlang, process_info, [Receiver, message_queue_len]),
    io:format(user, "~n    sender stuck after ~b MiB; receiver holds ~w; "
              "erlang:memory(total) / RSS / NIF heap MiB: A ~w -> ~w, B ~w -> ~w ",
              [Sent, Queued, mib(maps:get(a, Before)), mib(maps:get(a, Stuck)),
               mib(maps:get(b, Before)), mib(maps:get(b, Stuck))]),
    ?assert(Sent < 512),
    %% Documented bound: mailbox_limit (64 MiB) plus the carrier's buffers, well under 256 MiB
    %% more than before on each node, by erlang:memory and by the OS; the NIF's own heap (QUIC
    %% buffers up to a connection window, 36 MiB, plus the send queues) under 128 MiB.
    [?assert(element(I, maps:get(N, Stuck)) - element(I, maps:get(N, Before)) < 256 * 1024 * 1024)
     || N <- [a, b], I <- [1, 2]],
    [?assert(element(3, maps:get(N, Stuck)) < 128 * 1024 * 1024) || N <- [a, b]],
    %% The receiver goes: its messages are freed, the sender is resumed and finishes.
    ?P:call(B, erlang, exit, [Receiver, kill]),
    ?assertEqual(2048, ?P:call(A, ?MODULE, wait_flood_done, [Sender], 120000)).

mib(Bytes) -> list_to_tuple([B div (1024 * 1024) || B <- tuple_to_list(Bytes)]).

t_small_burst(#{a := A, b := B}) ->
    ?P:connect(A, B),
    {Intact, MaxReferenced} = ?P:call(A, ?MODULE, small_burst, [?P:nodename(B), 5000], 50000),
    ?assertEqual(5000, Intact),
    %% Small packets received together are copied into one binary, each handed to the runtime
    %% as a sub-binary of it; a message binary decoded out of one must not keep more than that
    %% binary alive (the runtime copies a small message before queueing it: 192 bytes here).
    ?assert(MaxReferenced =< 16 * 1024).

t_large_messages(#{a := A, b := B}) ->
    ?P:connect(A, B),
    Results = ?P:call(A, ?MODULE, large_messages, [?P:nodename(B)], 100000),
    ?assertEqual([], [R || {_, _, false, _} = R <- Results]),
    %% Joined by the carrier (more than 32 fragments, at most 64 MiB): the binary is a
    %% sub-binary of the packet the carrier copied the fragments into (its header and control
    %% message come first; the runtime's own join would hold 5 bytes more than the payload),
    %% which was allocated from the first fragment's size: at most one fragment of slack.
    [begin
         ?assert(Referenced > Size + 5),
         ?assert(Referenced =< Size + 64 * 1024 + 1024)
     end || {joined, Size, _, Referenced} <- Results],
    ?assertEqual(4, length(Results)).

t_priorities(#{a := A, b := B}) ->
    ?P:connect(A, B),
    NA = ?P:nodename(A),
    NB = ?P:nodename(B),
    High = #{controller => high, input_handler => high},
    %% B's schedulers busy with normal work: small messages make both high there.
    Spinners = ?P:call(B, ?MODULE, start_spinners, [4]),
    ?assertEqual(High, ?P:call(B, ?MODULE, priorities_after_pings, [NA, High])),
    %% 64 MiB from A to B: B's input handler is seen at normal priority meanwhile.
    ?assertEqual({ok, normal},
                 ?P:call(A, ?MODULE, input_priority_during_bulk, [NB, 64], 60000)),
    %% Small messages again: high again.
    ?assertEqual(High, ?P:call(B, ?MODULE, priorities_after_pings, [NA, High])),
    ?P:call(B, erlang, exit, [Spinners, kill]).

t_one_stream(#{a := A, b := B}) ->
    ?P:connect(A, B),
    ?assertEqual({1, 0}, ?P:call(A, ?MODULE, stream_counts, [?P:nodename(B)])),
    ?assertMatch({ok, _}, ?P:call(A, ?MODULE, many_senders, [?P:nodename(B), 8, 2000, 2],
                                  60000)).


t_bbr(#{a := A, b := B}) ->
    ?P:connect(A, B),
    ?assertMatch({ok, _}, ?P:call(A, ?MODULE, many_senders, [?P:nodename(B), 8, 2000, 2],
                                  60000)).

%%% ------------------------------------------------------------------
%%% Run on the nodes
%%% ------------------------------------------------------------------

%% @doc The priorities of the controller and input handler of the connection to Node, after
%% each of up to 200 pings until they are Want (the first ones after bulk data, or after the
%% node's load changed, may still show the old state).
priorities_after_pings(Node, Want) ->
    priorities_after_pings(Node, Want, 200).

priorities_after_pings(Node, Want, Left) ->
    pong = net_adm:ping(Node),
    Priorities = maps:map(fun(_, Pid) -> element(2, erlang:process_info(Pid, priority)) end,
                          connection_processes(Node)),
    case Priorities of
        Want -> Priorities;
        _ when Left =:= 1 -> Priorities;
        _ -> priorities_after_pings(Node, Want, Left - 1)
    end.

connection_processes(Node) ->
    {Node, Ctrl} = lists:keyfind(Node, 1, erlang:system_info(dist_ctrl)),
    {quic_dist, Ctrl, Input, _Conn} = quic_dist_conn:socket(Ctrl),
    #{controller => Ctrl, input_handler => Input}.

%% @doc N processes that keep this node's schedulers busy until the returned one is killed.
start_spinners(N) ->
    spawn(fun() ->
                  _ = [spawn_link(fun spin/0) || _ <- lists:seq(1, N)],
                  receive after infinity -> ok end
          end).

spin() ->
    _ = lists:seq(1, 100),
    spin().

%% @doc Sends MiBs 1 MiB binaries to a reader on Node while a watcher there samples the
%% priority of its input handler: {ok, normal} once seen at normal priority, or
%% {not_seen, Priorities}.
input_priority_during_bulk(Node, MiBs) ->
    Self = self(),
    Watcher = erpc:call(Node, ?MODULE, watch_priority, [node(), input_handler, Self]),
    Reader = spawn(Node, fun() -> read_n(MiBs, Self) end),
    Bin = binary:copy(<<"p">>, 1024 * 1024),
    _ = spawn_link(fun() -> [Reader ! Bin || _ <- lists:seq(1, MiBs)] end),
    receive {read, Reader} -> ok after 50000 -> error(bulk_not_read) end,
    Watcher ! stop,
    receive {Watcher, Seen} -> Seen after 10000 -> timeout end.

read_n(0, Report) -> Report ! {read, self()};
read_n(N, Report) -> receive _ -> read_n(N - 1, Report) end.

%% @doc A process that samples the priority of the connection's Which process (the one to
%% Node) until it sees `normal' or is told to stop; it then sends
%% {self(), {ok, normal} | {not_seen, PrioritiesSeen}} to ReportTo.
watch_priority(Node, Which, ReportTo) ->
    Pid = maps:get(Which, connection_processes(Node)),
    spawn(fun() -> watch_loop(Pid, ReportTo, #{}) end).

watch_loop(Pid, ReportTo, Seen) ->
    case erlang:process_info(Pid, priority) of
        {priority, normal} ->
            receive stop -> ReportTo ! {self(), {ok, normal}} end;
        {priority, P} ->
            receive stop -> ReportTo ! {self(), {not_seen, Seen#{P => true}}}
            after 0 ->
                    erlang:yield(),
                    watch_loop(Pid, ReportTo, Seen#{P => true})
            end
    end.

%% @doc {erlang:memory(total), OS resident set size, the NIF's own heap} of this node, bytes.
memory() ->
    {ok, Status} = file:read_file("/proc/self/status"),
    [_, Rest] = binary:split(Status, <<"VmRSS:">>),
    [Kb | _] = string:lexemes(binary_to_list(Rest), " \t\n"),
    #{allocated := Nif} = quic_dist:nif_memory(),
    {erlang:memory(total), list_to_integer(Kb) * 1024, Nif}.

%% @doc A receiver on Node that never reads, and a sender here that sends it Count binaries of
%% Size bytes, counting them in its dictionary.
start_flood(Node, Count, Size) ->
    Receiver = spawn(Node, fun() -> receive after infinity -> ok end end),
    Bin = binary:copy(<<"f">>, Size),
    Sender = spawn(fun() -> flood(Receiver, Bin, 0, Count) end),
    {Sender, Receiver}.

flood(_To, _Bin, Count, Count) ->
    put(sent, Count),
    receive after infinity -> ok end;
flood(To, Bin, N, Count) ->
    put(sent, N),
    To ! Bin,
    flood(To, Bin, N + 1, Count).

sent(Pid) ->
    {dictionary, D} = erlang:process_info(Pid, dictionary),
    proplists:get_value(sent, D, 0).

%% @doc Waits until Sender is suspended and has not progressed for a second; returns how many
%% it sent. Polls: nothing else tells when a process stops making progress.
wait_stuck(Sender) ->
    wait_stuck(Sender, -1, 60).

wait_stuck(Sender, _Last, 0) ->
    error({never_stuck, sent(Sender)});
wait_stuck(Sender, Last, Tries) ->
    receive after 1000 -> ok end,
    Now = sent(Sender),
    case {Now, erlang:process_info(Sender, status)} of
        {Last, {status, suspended}} -> Now;
        _ -> wait_stuck(Sender, Now, Tries - 1)
    end.

%% @doc Waits (bounded) until the flood's sender sent everything; returns the count.
wait_flood_done(Sender) ->
    ok = wait_until(fun() -> sent(Sender) =:= 2048 end, 110000),
    sent(Sender).

%% @doc Streams used to Node, each way: {this node's, the peer's}.
stream_counts(Node) ->
    {ok, #{stats := Stats}} = quic_dist:info(Node),
    {maps:get(streams, Stats), maps:get(peer_streams, Stats)}.

%% @doc Senders processes each send PerSender numbered messages (every 50th carries 2 KiB, every
%% 1000th 100 KiB) to one of Receivers processes on Node; each receiver checks that every
%% sender's messages arrive complete and in order. Returns {ok, [#{Sender => Count}]}.
many_senders(Node, Senders, PerSender, Receivers) ->
    Self = self(),
    Ref = make_ref(),
    PerReceiver = Senders div Receivers,
    Rs = [spawn(Node, ?MODULE, order_receiver, [Self, Ref, PerReceiver, PerSender])
          || _ <- lists:seq(1, Receivers)],
    RsT = list_to_tuple(Rs),
    Big = binary:copy(<<"b">>, ?BIG),
    Mid = binary:copy(<<"m">>, 2048),
    _ = [spawn_link(fun() ->
                            R = element(1 + Id rem Receivers, RsT),
                            send_numbered(R, Id, 1, PerSender, Big, Mid)
                    end) || Id <- lists:seq(1, Senders)],
    collect([{Ref, R} || R <- Rs], 160000).

send_numbered(_R, _Id, N, Last, _Big, _Mid) when N > Last ->
    ok;
send_numbered(R, Id, N, Last, Big, Mid) ->
    Payload = if N rem 1000 =:= 0 -> Big;
                 N rem 50 =:= 0 -> Mid;
                 true -> <<N:32>>
              end,
    R ! {seq, self(), Id, N, Payload},
    send_numbered(R, Id, N + 1, Last, Big, Mid).

%% @doc Receives Senders x PerSender messages; checks each sender's order and payloads.
order_receiver(ReportTo, Ref, Senders, PerSender) ->
    ReportTo ! {{Ref, self()}, order_loop(#{}, Senders * PerSender)}.

order_loop(Next, 0) ->
    {ok, maps:map(fun(_, N) -> N - 1 end, Next)};
order_loop(Next, Left) ->
    receive
        {seq, _Pid, Id, N, Payload} ->
            Expected = maps:get(Id, Next, 1),
            Size = if N rem 1000 =:= 0 -> ?BIG; N rem 50 =:= 0 -> 2048; true -> 4 end,
            case {N, byte_size(Payload)} of
                {Expected, Size} -> order_loop(Next#{Id => N + 1}, Left - 1);
                Got -> {error, {sender, Id, expected, {Expected, Size}, got, Got}}
            end
    after 60000 ->
            {error, {stalled, Next}}
    end.

collect(Tags, Timeout) ->
    Results = [receive {Tag, R} -> R after Timeout -> {error, timeout} end || Tag <- Tags],
    case [E || {error, _} = E <- Results] of
        [] -> {ok, [Counts || {ok, Counts} <- Results]};
        [E | _] -> E
    end.

%% @doc For each kind (monitor, link, monitor_by_name), Pairs processes here each send PerPair
%% messages to a partner on Node and then exit; the partner, which monitors or links to it
%% (by name for monitor_by_name), must see all the messages before the signal of the exit.
%% A process streaming 8 MiB messages to Node keeps other streams busy meanwhile.
%% Returns #{Kind => pairs that saw the right order}.
signal_pairs(Node, Pairs, PerPair) ->
    Self = self(),
    Sink = spawn(Node, fun() -> sink() end),
    Bulk = spawn(fun() -> bulk(Sink, binary:copy(<<"x">>, 8 * 1024 * 1024)) end),
    Kinds = [monitor, link, monitor_by_name],
    Runs = [{Kind, I, spawn(fun() -> signal_pair(Self, Node, Kind, I, PerPair) end)}
            || Kind <- Kinds, I <- lists:seq(1, Pairs)],
    Results = [receive {pair_result, Kind, I, R} -> {Kind, R} after 100000 -> {Kind, timeout} end
               || {Kind, I, _} <- Runs],
    exit(Bulk, kill),
    exit(Sink, kill),
    Bad = [{K, R} || {K, R} <- Results, R =/= ok],
    case Bad of
        [] -> maps:from_list([{K, Pairs} || K <- Kinds]);
        _ -> {bad, lists:sublist(Bad, 5)}
    end.

sink() ->
    receive _ -> sink() end.

bulk(Sink, Bin) ->
    Sink ! Bin,
    bulk(Sink, Bin).

%% One pair: this process spawns its partner on Node, waits until it watches, sends, exits.
signal_pair(Report, Node, Kind, I, PerPair) ->
    Name = list_to_atom("qdt_named_" ++ integer_to_list(I)),
    Kind =:= monitor_by_name andalso register(Name, self()),
    Me = self(),
    Partner = spawn(Node, fun() -> partner(Report, Kind, I, Me, {Name, node(Me)}, PerPair) end),
    receive {Partner, watching} -> ok after 30000 -> exit(partner_not_ready) end,
    Big = binary:copy(<<"p">>, ?BIG),
    [Partner ! {msg, N, if N =:= PerPair div 2 -> Big; true -> <<>> end}
     || N <- lists:seq(1, PerPair)],
    exit({done, I}).

partner(Report, Kind, I, Sender, Named, PerPair) ->
    Ref = case Kind of
              monitor -> monitor(process, Sender);
              monitor_by_name -> monitor(process, Named);
              link -> process_flag(trap_exit, true), link(Sender), undefined
          end,
    Sender ! {self(), watching},
    Result = partner_loop(Ref, Sender, 1, PerPair),
    Report ! {pair_result, Kind, I, Result}.

partner_loop(Ref, Sender, N, PerPair) ->
    receive
        {msg, N, _} ->
            partner_loop(Ref, Sender, N + 1, PerPair);
        {msg, Other, _} ->
            {out_of_order, expected, N, got, Other};
        {'DOWN', Ref, process, _, Reason} when N > PerPair ->
            check_reason(Reason);
        {'DOWN', Ref, process, _, Reason} ->
            {signal_before_message, N, Reason};
        {'EXIT', Sender, Reason} when N > PerPair ->
            check_reason(Reason);
        {'EXIT', Sender, Reason} ->
            {signal_before_message, N, Reason}
    after 60000 ->
            {stalled, N}
    end.

check_reason({done, _}) -> ok;
check_reason(Other) -> {wrong_reason, Other}.

%% @doc Sends a Size-byte binary from one process to a process on Node and, once at least an
%% eighth of it has left this node, a small message between two other processes. Returns the
%% order in which the receivers on Node got them.
head_of_line(Node, Size) ->
    Self = self(),
    Ref = make_ref(),
    Here = node(),
    Observer = spawn(Node, fun() -> observe(Self, Ref, []) end),
    BigReceiver = spawn(Node, fun() ->
                                      receive {big, B} -> Observer ! {big, byte_size(B)} end
                              end),
    %% The UDP bytes its node has received from ours when the small message arrives.
    SmallReceiver = spawn(Node, fun() ->
                                        receive small -> ok end,
                                        Observer ! small,
                                        Self ! {Ref, received, udp_bytes(Here, received)}
                                end),
    Big = binary:copy(<<"h">>, Size),
    Sent0 = udp_bytes(Node, sent),
    _ = spawn(fun() -> BigReceiver ! {big, Big} end),
    ok = wait_until(fun() -> udp_bytes(Node, sent) - Sent0 >= Size div 8 end, 60000),
    _ = spawn(fun() -> SmallReceiver ! small end),
    receive
        {Ref, received, Received} ->
            receive {Ref, Order} -> {Order, Received} after 150000 -> timeout end
    after 150000 -> timeout
    end.

%% Sends N 100-byte binaries, numbered, at once to a collector on Node. Returns how many
%% arrived intact and the most bytes any of them kept referenced there.
small_burst(Node, N) ->
    Self = self(),
    Collector = spawn(Node, fun() -> collect_burst(Self, N, 0, 0) end),
    [Collector ! burst_message(I) || I <- lists:seq(1, N)],
    receive {Collector, Result} -> Result after 45000 -> timeout end.

%% Sends large binaries to a collector on Node: joined by the carrier (8 MiB, and 3 MB, not a
%% multiple of the fragment size), in a tuple (two binaries of one message), and passed through
%% as fragments (65 MiB, above what the carrier joins). Returns {Kind, Size, Intact,
%% ReferencedBytes} per binary.
large_messages(Node) ->
    Self = self(),
    Bins = [{joined, crypto:strong_rand_bytes(8 * 1024 * 1024)},
            {joined, crypto:strong_rand_bytes(3000001)},
            {passed, binary:copy(crypto:strong_rand_bytes(1024), 65 * 1024)}],
    Pair = {crypto:strong_rand_bytes(4 * 1024 * 1024), crypto:strong_rand_bytes(4 * 1024 * 1024)},
    Collector = spawn(Node, fun() -> collect_large(Self, length(Bins) + 1, []) end),
    [Collector ! Bin || {_, Bin} <- Bins],
    Collector ! Pair,
    receive
        {Collector, Got} ->
            Expected = [{Kind, erlang:md5(Bin)} || {Kind, Bin} <- Bins]
                ++ [{tuple, erlang:md5(element(1, Pair))}],
            [{Kind, Size, Md5 =:= Md5Got, Referenced}
             || {{Kind, Md5}, {Md5Got, Size, Referenced}} <- lists:zip(Expected, Got)]
    after 90000 -> timeout
    end.

collect_large(From, 0, Acc) ->
    From ! {self(), lists:reverse(Acc)};
collect_large(From, N, Acc) ->
    receive
        {B, _} when is_binary(B) -> collect_large(From, N - 1, [describe_large(B) | Acc]);
        B when is_binary(B) -> collect_large(From, N - 1, [describe_large(B) | Acc])
    end.

describe_large(B) ->
    {erlang:md5(B), byte_size(B), binary:referenced_byte_size(B)}.

burst_message(I) ->
    <<I:32, (binary:copy(<<(I rem 256)>>, 96))/binary>>.

collect_burst(From, 0, Intact, MaxReferenced) ->
    From ! {self(), {Intact, MaxReferenced}};
collect_burst(From, N, Intact, MaxReferenced) ->
    receive
        <<I:32, _/binary>> = B ->
            Ok = case B =:= burst_message(I) of true -> 1; false -> 0 end,
            collect_burst(From, N - 1, Intact + Ok,
                          max(MaxReferenced, binary:referenced_byte_size(B)))
    end.

%% Pings an echo on Node while a streamer sends 8 MiB binaries to a sink there (at most 4
%% unacknowledged), until the sink has Total bytes (or 100 000 round trips); the pinger's first
%% message to Node goes before or after the streamer's, as Order says. Returns, per round trip
%% once the stream flows, the bulk bytes the sink got since the previous one.
pings_beside_stream(Node, Order, Total) ->
    Self = self(),
    Spawn = fun(F) -> Me = self(), spawn(Node, fun() -> Me ! {self(), up}, F() end) end,
    Up = fun(Pid) -> receive {Pid, up} -> Pid end end,
    Pinger = fun() ->
                     receive go -> ok end,
                     Echo = Up(Spawn(fun echo_with_count/0)),
                     Self ! {ready, self()},
                     receive start -> ok end,
                     Self ! {gaps, ping_gaps(Echo, Total, 100000, 0, [])}
             end,
    Streamer = fun() ->
                       receive go -> ok end,
                       Sink = Up(Spawn(fun() -> counting_sink(undefined) end)),
                       Self ! {ready, self()},
                       receive start -> ok end,
                       stream_to(Sink, binary:copy(<<"s">>, 8 * 1024 * 1024), 4)
               end,
    {P, S} = {spawn_link(Pinger), spawn_link(Streamer)},
    %% Each one's first message to Node (the spawn) in the order asked.
    First = case Order of pinger_first -> [P, S]; streamer_first -> [S, P] end,
    [begin Pid ! go, receive {ready, Pid} -> ok end end || Pid <- First],
    S ! start,
    P ! start,
    Gaps = receive {gaps, G} -> G after 100000 -> error(pings_timeout) end,
    unlink(S),
    exit(S, kill),
    Gaps.

%% The sink counts bulk bytes in a counter the echo reads.
counting_sink(undefined) ->
    Ref = counters:new(1, []),
    persistent_term:put({?MODULE, sink_bytes}, Ref),
    counting_sink(Ref);
counting_sink(Ref) ->
    receive
        {From, B} when is_binary(B) ->
            counters:add(Ref, 1, byte_size(B)),
            From ! got,
            counting_sink(Ref)
    end.

echo_with_count() ->
    receive
        {From, ping} ->
            Bytes = case persistent_term:get({?MODULE, sink_bytes}, undefined) of
                        undefined -> 0;
                        Ref -> counters:get(Ref, 1)
                    end,
            From ! {pong, Bytes},
            echo_with_count()
    end.

stream_to(Sink, Bin, Credit) when Credit > 0 ->
    Sink ! {self(), Bin},
    stream_to(Sink, Bin, Credit - 1);
stream_to(Sink, Bin, 0) ->
    receive got -> stream_to(Sink, Bin, 1) end.

ping_gaps(_Echo, _Total, 0, _Last, Acc) ->
    Acc;
ping_gaps(_Echo, Total, _N, Last, Acc) when Last >= Total ->
    Acc;
ping_gaps(Echo, Total, N, Last, Acc) ->
    Echo ! {self(), ping},
    receive {pong, Bytes} -> ok end,
    %% Round trips before the first bulk message has arrived are not counted.
    Acc1 = case Last of 0 -> Acc; _ -> [Bytes - Last | Acc] end,
    ping_gaps(Echo, Total, N - 1, Bytes, Acc1).

observe(Report, Ref, Seen) when length(Seen) =:= 2 ->
    Report ! {Ref, lists:reverse(Seen)};
observe(Report, Ref, Seen) ->
    receive What -> observe(Report, Ref, [What | Seen]) end.

udp_bytes(Node, Which) ->
    {ok, #{stats := #{udp_bytes_sent := Sent, udp_bytes_received := Received}}} =
        quic_dist:info(Node),
    case Which of
        sent -> Sent;
        received -> Received
    end.

%% Polls Cond every 2 ms until it holds (nothing else can tell when bytes have left).
wait_until(Cond, Timeout) when Timeout =< 0 ->
    Cond() orelse error(condition_never_held),
    ok;
wait_until(Cond, Timeout) ->
    case Cond() of
        true -> ok;
        false ->
            receive after 2 -> ok end,
            wait_until(Cond, Timeout - 2)
    end.
