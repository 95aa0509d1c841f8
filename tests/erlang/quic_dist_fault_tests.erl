%%% @doc Faults, loss and load (issue 7): nothing is lost and nothing hangs.
%%%
%%% Real nodes (quic_dist_test_peers), some of them in network namespaces joined by a veth pair
%%% (quic_dist_netns; root, ip, nft and tc needed, otherwise those tests are skipped):
%%% - loss: 1% and 5% random loss both ways, 1M sequence-numbered messages over 16
%%%   sender/receiver pairs, complete and in order per pair; the same harness with TCP
%%%   distribution (smaller), to show it is carrier-neutral;
%%% - partition longer than net_ticktime: nodedown on both sides, reconnect on the next send
%%%   after healing, nothing sent after reconnection lost;
%%% - blip shorter than net_ticktime while messages flow: no nodedown, nothing lost;
%%% - NAT rebinding (the dialling node's datagrams leave from a new port) while messages flow:
%%%   the peer follows the new address, no nodedown, nothing lost;
%%% - kill -9 of a node in the middle of 64 MiB messages (both ways, rate-limited link): the
%%%   survivor sees nodedown, frees the partial messages, keeps serving a third node;
%%% and on loopback:
%%% - load: 6 nodes fully meshed, everyone sending to everyone for ?LOAD_SECS: no loss, no
%%%   nodedown, bounded memory (messages/s and peak memory are printed);
%%% - restart storm: one node restarted ?RESTARTS times while two others keep sending to it:
%%%   nodedown then nodeup each time, no leak of processes, ports, nodes or connections.
%%%
%%% Messages: a sender sends `{seq, Id, I, SenderPid}' for I = 1, 2, ... and keeps at most
%%% `window' messages unacknowledged (the receiver acknowledges every `ack_every'); at the end
%%% `{seq_end, Id, Last, SenderPid}', and the receiver reports what it got, in which order.
%%% Synchronisation is by messages and monitors; polling (bounded) only where nothing can tell
%%% (kernel byte counters, memory returning to its level, counts settling). Numbers printed are
%%% measurements, not timed assertions; the assertions are on completeness, order, node events
%%% and memory bounds.
-module(quic_dist_fault_tests).

-include_lib("eunit/include/eunit.hrl").

%% Run on the nodes.
-export([stream_for/2, job_start/3, job_await/2,
         run_pairs/2, seq_send/3, seq_rx/2, seq_rx_register/3,
         progress_init/0, progress/0,
         watch_start/0, watch_wait/4, watch_events/0,
         sink_start/0, sink_stats/0, send_big/2,
         mem_settled/0, mem_sampler/1, mem_sampler_stop/0,
         counts/0, link_stats/1, pinger_start/2, pinger_stop/0, echo/1]).

-define(P, quic_dist_test_peers).
-define(NS, quic_dist_netns).

%% Loss scenario: messages in all, sender/receiver pairs.
-define(LOSS_MESSAGES, 1000000).
-define(LOSS_PAIRS, 16).
%% Load scenario: nodes and duration (seconds), per-node memory bounds (MiB).
-define(LOAD_NODES, 6).
-define(LOAD_SECS, 20).
-define(LOAD_MAX_TOTAL_MIB, 128).
-define(LOAD_MAX_RSS_MIB, 256).
%% Restart storm: restarts; every ?RESTART_KILL_EVERY-th one is a kill -9, the others a stop.
-define(RESTARTS, 20).
-define(RESTART_KILL_EVERY, 5).
%% Peer death: message size; kill once this much went each way; memory tolerances after
%% nodedown (erlang:memory(total) and OS RSS, against the level before the transfer, after a
%% garbage collection of every process; polled for up to 20 s). 8 MiB is an eighth of the
%% message: room for allocator caches, far below the part of the message that was in flight.
%% Measured with TCP distribution: RSS 1-3 MiB below the level before.
-define(BIG, (64 * 1024 * 1024)).
-define(KILL_AFTER, (16 * 1024 * 1024)).
-define(FREED_TOTAL_TOLERANCE, (8 * 1024 * 1024)).
-define(FREED_RSS_TOLERANCE, (8 * 1024 * 1024)).

-define(WATCH, qdf_watch).
-define(SINK, qdf_sink).
-define(RX, qdf_rx).
-define(MEM, qdf_mem).
-define(PINGER, qdf_pinger).
-define(PROGRESS, {?MODULE, progress}).
%% A receiver gives up after this long without a message; a sender after this long without
%% an acknowledgement or report.
-define(STALL_MS, 60000).

%%% ------------------------------------------------------------------
%%% Test generators
%%% ------------------------------------------------------------------

netns_test_() ->
    {inorder,
     [netns("1% loss both ways: 1M messages over 16 pairs arrive complete and in order", 240,
            fun(C) -> t_loss(C, quic, 1, ?LOSS_MESSAGES) end),
      netns("5% loss both ways: 1M messages over 16 pairs arrive complete and in order", 300,
            fun(C) -> t_loss(C, quic, 5, ?LOSS_MESSAGES) end),
      netns("same harness, TCP distribution: 5% loss, 1M messages over 16 pairs", 240,
            fun(C) -> t_loss(C, tcp, 5, ?LOSS_MESSAGES) end),
      netns("partition longer than net_ticktime (4 s): nodedown both sides, reconnect on "
            "next send, nothing lost after", 120, fun t_partition/1),
      netns("1 s blip, shorter than net_ticktime (8 s), while messages flow: no nodedown, "
            "nothing lost", 120, fun t_blip/1),
      netns("NAT rebinding of the dialling node while messages flow: the connection moves to "
            "the new address, no nodedown, nothing lost", 120, fun t_nat_rebinding/1),
      netns("a firewall that passes TCP only: epmd answers, QUIC does not; pang, and the "
            "dialling node's log says to check the udp port", 60, fun t_udp_blocked/1),
      netns("bulk data for 3 x net_ticktime (4 s) through a 20 Mbit/s link: the connection "
            "stays up", 120, fun t_liveness_under_bulk/1),
      netns("kill -9 in the middle of 64 MiB messages both ways: nodedown, erlang:memory "
            "and OS RSS back, a third node still served", 120,
            fun(C) -> t_peer_death(C, quic, assert) end),
      netns("same harness, TCP distribution: kill -9 in the middle of 64 MiB messages: "
            "erlang:memory and OS RSS back", 120, fun(C) -> t_peer_death(C, tcp, assert) end)]}.

loopback_test_() ->
    {inorder,
     [isolated(lists:flatten(io_lib:format("load: ~b nodes fully meshed, all to all for ~b s: "
                                           "nothing lost, no nodedown, bounded memory",
                                           [?LOAD_NODES, ?LOAD_SECS])),
               ?LOAD_SECS + 150, fun t_load/1),
      isolated(lists:flatten(io_lib:format("restart storm: one node restarted ~b times while "
                                           "two others send to it: nodedown and nodeup each "
                                           "time, no leaks", [?RESTARTS])),
               240, fun t_restart_storm/1)]}.

%% A test in two fresh namespaces (deleted afterwards, also on failure or timeout), or a
%% skip when this machine cannot make them.
netns(Title, Secs, Fun) ->
    case ?NS:available() of
        ok ->
            {Title, {setup, fun netns_setup/0, fun netns_cleanup/1,
                     fun(Ctx) -> {timeout, Secs, fun() -> Fun(Ctx) end} end}};
        {skip, Why} ->
            ?P:skipped_test(Title, Why)
    end.

netns_setup() ->
    Net = ?NS:create(),
    #{net => Net, reg => ?P:new_registry()}.

netns_cleanup(#{net := Net, reg := Reg}) ->
    try
        ?P:cleanup(Reg)
    after
        ?NS:destroy(Net)
    end.

isolated(Title, Secs, Fun) ->
    {Title, {setup, fun ?P:new_registry/0, fun ?P:cleanup/1,
             fun(Reg) -> {timeout, Secs, fun() -> Fun(Reg) end} end}}.

%%% ------------------------------------------------------------------
%%% Loss
%%% ------------------------------------------------------------------

t_loss(#{net := Net, reg := Reg}, Carrier, Percent, Messages) ->
    ok = ?NS:set_loss(Net, Percent),
    [A, B] = ?P:start_many(Reg, [?NS:node_opts(Net, a, #{prefix => "a", carrier => Carrier}),
                                 ?NS:node_opts(Net, b, #{prefix => "b", carrier => Carrier})]),
    NB = ?P:nodename(B),
    ?P:connect(A, B),
    PerPair = Messages div ?LOSS_PAIRS,
    Opts = #{count => PerPair, window => 4000, ack_every => 500},
    Job = call(A, ?MODULE, job_start, [?MODULE, run_pairs,
                                       [[{Id, NB} || Id <- lists:seq(1, ?LOSS_PAIRS)], Opts]]),
    R = call(A, ?MODULE, job_await, [Job, 280000], 290000),
    Stats = call(A, ?MODULE, link_stats, [NB]),
    io:format(user, "~n    [~s, ~b% loss] ~b messages in ~b ms: ~b msg/s; ~s ",
              [Carrier, Percent, maps:get(received, R), maps:get(ms, R),
               rate(maps:get(received, R), maps:get(ms, R)), format_stats(Stats)]),
    ?assertEqual([], maps:get(bad, R)),
    ?assertEqual(PerPair * ?LOSS_PAIRS, maps:get(received, R)),
    ?assertEqual(PerPair * ?LOSS_PAIRS, maps:get(sent, R)),
    %% The connection held: same link, no nodedown.
    ?assertEqual([NB], call(A, erlang, nodes, [])).

%%% ------------------------------------------------------------------
%%% Partition and blip
%%% ------------------------------------------------------------------

t_partition(#{net := Net, reg := Reg}) ->
    Tick = 4,
    [A, B] = ?P:start_many(Reg, [?NS:node_opts(Net, a, #{prefix => "a", ticktime => Tick}),
                                 ?NS:node_opts(Net, b, #{prefix => "b", ticktime => Tick})]),
    NA = ?P:nodename(A),
    NB = ?P:nodename(B),
    ?P:connect(A, B),
    [call(P, ?MODULE, watch_start, []) || P <- [A, B]],
    %% Receivers, registered on both sides, outlive the partition.
    call(A, ?MODULE, seq_rx_register, [?RX, 2, 500]),
    call(B, ?MODULE, seq_rx_register, [?RX, 1, 500]),
    TCut = os:system_time(millisecond),
    ok = ?NS:cut(Net),
    {ok, DownA, ReasonA} = call(A, ?MODULE, watch_wait, [nodedown, NB, 1, 30000], 35000),
    {ok, DownB, ReasonB} = call(B, ?MODULE, watch_wait, [nodedown, NA, 1, 30000], 35000),
    ?assertEqual([], call(A, erlang, nodes, [connected])),
    ?assertEqual([], call(B, erlang, nodes, [connected])),
    THeal = os:system_time(millisecond),
    ok = ?NS:heal(Net),
    %% Nothing connects by itself (nothing was sent): the first message of A's stream does.
    N = 50000,
    JobA = call(A, ?MODULE, job_start, [?MODULE, seq_send,
                                        [{?RX, NB}, 1, #{count => N, window => 5000}]]),
    {ok, UpA, _} = call(A, ?MODULE, watch_wait, [nodeup, NB, 1, 30000], 35000),
    {ok, _UpB, _} = call(B, ?MODULE, watch_wait, [nodeup, NA, 1, 30000], 35000),
    %% ... and B sends back over the new connection at the same time.
    JobB = call(B, ?MODULE, job_start, [?MODULE, seq_send,
                                        [{?RX, NA}, 2, #{count => N, window => 5000}]]),
    RA = call(A, ?MODULE, job_await, [JobA, 90000], 95000),
    RB = call(B, ?MODULE, job_await, [JobB, 90000], 95000),
    io:format(user, "~n    cut for ~b ms; nodedown after ~b ms on A (~p), ~b ms on B (~p); "
              "reconnected ~b ms after healing ",
              [THeal - TCut, DownA - TCut, ReasonA, DownB - TCut, ReasonB, UpA - THeal]),
    ?assert(THeal - TCut > Tick * 1000),
    ?assertMatch(#{sent := N, received := N, out_of_order := 0}, RA),
    ?assertMatch(#{sent := N, received := N, out_of_order := 0}, RB),
    %% One nodedown, one nodeup on each side: the new connection held.
    ?assertEqual(#{nodedown => 1, nodeup => 1}, event_counts(A, NB)),
    ?assertEqual(#{nodedown => 1, nodeup => 1}, event_counts(B, NA)).

t_blip(#{net := Net, reg := Reg}) ->
    [A, B] = ?P:start_many(Reg, [?NS:node_opts(Net, a, #{prefix => "a", ticktime => 8}),
                                 ?NS:node_opts(Net, b, #{prefix => "b", ticktime => 8})]),
    NA = ?P:nodename(A),
    NB = ?P:nodename(B),
    ?P:connect(A, B),
    [call(P, ?MODULE, watch_start, []) || P <- [A, B]],
    %% The window is larger than what a 1 s blip holds back, so the sender keeps sending
    %% through the blip.
    Job = paced_job(A, NB, 8000),
    {SentAtCut, AckedAtCut} = call(A, ?MODULE, progress, []),
    ok = ?NS:cut(Net),
    %% The blip itself (a fault of a given length, not a wait for something).
    timer:sleep(1000),
    {SentAtHeal, AckedAtHeal} = call(A, ?MODULE, progress, []),
    ok = ?NS:heal(Net),
    T0 = erlang:monotonic_time(millisecond),
    %% Everything sent up to the heal is acknowledged: traffic resumed.
    {ok, _} = poll(fun() -> {_, Acked} = call(A, ?MODULE, progress, []),
                            Acked >= SentAtHeal - 200 end, 20000),
    Resumed = erlang:monotonic_time(millisecond) - T0,
    R = call(A, ?MODULE, job_await, [Job, 60000], 65000),
    io:format(user, "~n    ~b messages; ~b sent and ~b acknowledged during the 1 s blip; "
              "all acknowledged ~b ms after healing; ~s ",
              [maps:get(received, R), SentAtHeal - SentAtCut, AckedAtHeal - AckedAtCut,
               Resumed, format_stats(call(A, ?MODULE, link_stats, [NB]))]),
    ?assert(SentAtHeal - SentAtCut > 1000),
    ?assertEqual([], maps:get(bad, R)),
    ?assertEqual(maps:get(sent, R), maps:get(received, R)),
    ?assertEqual([], call(A, ?MODULE, watch_events, [])),
    ?assertEqual([], call(B, ?MODULE, watch_events, [])),
    ?assertEqual([NB], call(A, erlang, nodes, [])),
    ?assertEqual([NA], call(B, erlang, nodes, [])).

%% Starts about 10 000 messages/s from A to one receiver on NB for DurationMs, with a window of
%% 100 000 unacknowledged (more than a short fault holds back), and returns the job once 5000
%% have been acknowledged.
paced_job(A, NB, DurationMs) ->
    call(A, ?MODULE, progress_init, []),
    Job = call(A, ?MODULE, job_start,
               [?MODULE, run_pairs, [[{1, NB}], #{duration_ms => DurationMs, pace_per_ms => 10,
                                                 window => 100000, ack_every => 200,
                                                 progress => true}]]),
    {ok, _} = poll(fun() -> {_, Acked} = call(A, ?MODULE, progress, []), Acked >= 5000 end,
                   20000),
    Job.

%%% ------------------------------------------------------------------
%%% NAT rebinding
%%% ------------------------------------------------------------------

%% A NAT in front of a node may give its flow a new port (a mapping that timed out, a NAT
%% gateway restarted, a laptop's network changed behind the same peer address). QUIC
%% identifies a connection by its connection IDs, not by addresses: the peer validates the
%% new path and carries on. (TCP distribution loses the connection: the peer answers the
%% unknown port with a reset, nodedown, and the next send connects again.)
t_nat_rebinding(#{net := Net, reg := Reg}) ->
    [A, B] = ?P:start_many(Reg, [?NS:node_opts(Net, a, #{prefix => "a"}),
                                 ?NS:node_opts(Net, b, #{prefix => "b"})]),
    NA = ?P:nodename(A),
    NB = ?P:nodename(B),
    %% A dials, so A is the connection's client: the side whose address may change.
    ?P:connect(A, B),
    [call(P, ?MODULE, watch_start, []) || P <- [A, B]],
    {ok, #{remote := {IpA, PortA}}} = call(B, quic_dist, info, [NA]),
    NewPort = case PortA of 41000 -> 41001; _ -> 41000 end,
    Job = paced_job(A, NB, 6000),
    ok = ?NS:rebind(Net, a, {PortA, NewPort}),
    {SentAtRebind, _} = call(A, ?MODULE, progress, []),
    %% B sees A at its new address ...
    Moved = poll(fun() ->
                         {ok, #{remote := Remote}} = call(B, quic_dist, info, [NA]),
                         {Remote =:= {IpA, NewPort}, Remote}
                 end, 10000),
    ?assertEqual({ok, {IpA, NewPort}}, Moved),
    %% ... and what A sent after the rebinding is acknowledged over it.
    {ok, _} = poll(fun() -> {_, Acked} = call(A, ?MODULE, progress, []),
                            Acked >= SentAtRebind + 1000 end, 20000),
    R = call(A, ?MODULE, job_await, [Job, 60000], 65000),
    io:format(user, "~n    ~b messages; port ~b -> ~b after ~b sent; ~s ",
              [maps:get(received, R), PortA, NewPort, SentAtRebind,
               format_stats(call(A, ?MODULE, link_stats, [NB]))]),
    ?assertEqual([], maps:get(bad, R)),
    ?assertEqual(maps:get(sent, R), maps:get(received, R)),
    ?assertEqual(NA, call(B, rpc, call, [NA, erlang, node, [], 5000])),
    ?assertEqual([], call(A, ?MODULE, watch_events, [])),
    ?assertEqual([], call(B, ?MODULE, watch_events, [])),
    ?assertEqual([NB], call(A, erlang, nodes, [])),
    ?assertEqual([NA], call(B, erlang, nodes, [])).

%% A firewall (or cloud security group) that passes TCP only is the usual first obstacle:
%% epmd answers, the QUIC handshake gets nothing back. The set-up ends at net_setuptime as it
%% would for TCP distribution, but the node says what to look at.
t_udp_blocked(#{net := Net, reg := Reg}) ->
    [A, B] = ?P:start_many(Reg, [?NS:node_opts(Net, a, #{prefix => "a"}),
                                 ?NS:node_opts(Net, b, #{prefix => "b"})]),
    NB = ?P:nodename(B),
    ok = ?NS:block_udp(Net, b),
    {Result, Lines} = call(A, quic_dist_multinode_tests, ping_with_log, [NB], 20000),
    io:format(user, "~n    ~p; logged: ~ts ", [Result, lists:join(" | ", Lines)]),
    ?assertEqual(pang, Result),
    ?assertMatch([_], [L || L <- Lines, string:find(L, "no QUIC handshake") =/= nomatch,
                            string:find(L, "check that udp port") =/= nomatch]),
    %% The node is fine: once the firewall lets UDP through, the next attempt connects.
    ok = ?NS:unblock_udp(Net, b),
    ?assertEqual(pong, call(A, net_adm, ping, [NB])).

%%% ------------------------------------------------------------------
%%% Liveness while bulk data saturates a slow link
%%% ------------------------------------------------------------------

t_liveness_under_bulk(#{net := Net, reg := Reg}) ->
    [A, B] = ?P:start_many(Reg, [?NS:node_opts(Net, a, #{prefix => "a", ticktime => 4}),
                                 ?NS:node_opts(Net, b, #{prefix => "b", ticktime => 4})]),
    NA = ?P:nodename(A),
    NB = ?P:nodename(B),
    ok = ?NS:set_rate(Net, "20mbit"),
    ?P:connect(A, B),
    [call(P, ?MODULE, watch_start, []) || P <- [A, B]],
    %% 12 s of 1 MiB messages, far more than the link carries: the link stays full, ticks must
    %% still get through (and data received counts as liveness).
    Bytes = call(A, ?MODULE, stream_for, [NB, 12000], 60000),
    io:format(user, "~n    ~.1f MB streamed in 12 s through 20 Mbit/s; ~s ",
              [Bytes / 1.0e6, format_stats(call(A, ?MODULE, link_stats, [NB]))]),
    ?assert(Bytes > 12 * 1000000),
    ?assertEqual([], call(A, ?MODULE, watch_events, [])),
    ?assertEqual([], call(B, ?MODULE, watch_events, [])),
    ?assertEqual([NB], call(A, erlang, nodes, [])),
    ?assertEqual([NA], call(B, erlang, nodes, [])).

%% @doc Sends 1 MiB binaries to a counting sink on Node for Ms milliseconds; returns the bytes
%% the sink got by then (backpressure suspends the sender whenever the link is full).
stream_for(Node, Ms) ->
    Self = self(),
    Sink = spawn(Node, fun() -> count_sink(Self, 0) end),
    Deadline = erlang:monotonic_time(millisecond) + Ms,
    Bin = binary:copy(<<"L">>, 1024 * 1024),
    Streamer = spawn_link(fun() -> stream_until(Sink, Bin, Deadline) end),
    Mon = monitor(process, Streamer),
    receive {'DOWN', Mon, process, Streamer, _} -> ok end,
    Sink ! {count, Self},
    receive {Sink, N} -> N after 30000 -> error(sink_silent) end.

stream_until(Sink, Bin, Deadline) ->
    case erlang:monotonic_time(millisecond) < Deadline of
        true -> Sink ! Bin, stream_until(Sink, Bin, Deadline);
        false -> ok
    end.

count_sink(Owner, N) ->
    receive
        B when is_binary(B) -> count_sink(Owner, N + byte_size(B));
        {count, Owner} -> Owner ! {self(), N}
    end.

%%% ------------------------------------------------------------------
%%% Peer death in the middle of a large message
%%% ------------------------------------------------------------------

%% Rss: `assert' (the OS RSS must come back too) or `report' (printed only; see the known
%% issue in netns_test_/0).
t_peer_death(#{net := Net, reg := Reg}, Carrier, Rss) ->
    %% A and C share namespace a (C talks to A over that namespace's loopback), B is alone
    %% in b. The veth is limited to 200 Mbit/s each way so that 64 MiB take ~3 s.
    ok = ?NS:set_rate(Net, "200mbit"),
    Opts = #{ticktime => 4, carrier => Carrier},
    [A, C, B] = ?P:start_many(Reg, [?NS:node_opts(Net, a, Opts#{prefix => "a"}),
                                    ?NS:node_opts(Net, a, Opts#{prefix => "c"}),
                                    ?NS:node_opts(Net, b, Opts#{prefix => "b"})]),
    NA = ?P:nodename(A),
    NB = ?P:nodename(B),
    NC = ?P:nodename(C),
    ?P:connect(A, B),
    ?P:connect(C, A),
    call(A, ?MODULE, watch_start, []),
    [call(P, ?MODULE, sink_start, []) || P <- [A, B]],
    Before = call(A, ?MODULE, mem_settled, []),
    Sampler = call(A, ?MODULE, job_start, [?MODULE, mem_sampler, [20]]),
    Rx0 = ?NS:rx_bytes(Net, a),
    Tx0 = ?NS:tx_bytes(Net, a),
    %% 64 MiB each way, at the same time; each sending process exits once its send returns.
    ok = call(A, ?MODULE, send_big, [{?SINK, NB}, ?BIG]),
    ok = call(B, ?MODULE, send_big, [{?SINK, NA}, ?BIG]),
    {ok, _} = poll(fun() -> ?NS:rx_bytes(Net, a) - Rx0 >= ?KILL_AFTER andalso
                                ?NS:tx_bytes(Net, a) - Tx0 >= ?KILL_AFTER end, 30000),
    Rx = ?NS:rx_bytes(Net, a) - Rx0,
    Tx = ?NS:tx_bytes(Net, a) - Tx0,
    %% Partial for sure: neither side has delivered its message yet. (This also fails when the
    %% two directions do not share the link: with quinn's BBR one side had all 64 MiB before
    %% the other had sent 16, in 4 runs of 5.)
    ?assertEqual(#{count => 0, bytes => 0}, call(A, ?MODULE, sink_stats, [])),
    ?assertEqual(#{count => 0, bytes => 0}, call(B, ?MODULE, sink_stats, [])),
    ?assertEqual(NA, call(C, rpc, call, [NA, erlang, node, []])),
    TKill = os:system_time(millisecond),
    ok = ?P:kill(B),
    {ok, Down, Reason} = call(A, ?MODULE, watch_wait, [nodedown, NB, 1, 30000], 35000),
    %% A keeps serving C.
    ?assertEqual(NA, call(C, rpc, call, [NA, erlang, node, []])),
    ?assertEqual({1048576, true}, call(C, ?MODULE, echo, [NA])),
    ?assertEqual([NC], call(A, erlang, nodes, [])),
    %% The partial messages are freed: back to the level before the transfer (polled: nothing
    %% says when the memory is returned).
    TotalOk = fun(M) -> maps:get(total, M) =< maps:get(total, Before) + ?FREED_TOTAL_TOLERANCE end,
    RssOk = fun(M) -> maps:get(rss, M) =< maps:get(rss, Before) + ?FREED_RSS_TOLERANCE end,
    T0 = erlang:monotonic_time(millisecond),
    {Settled, After} =
        poll(fun() ->
                     M = call(A, ?MODULE, mem_settled, []),
                     {TotalOk(M) andalso RssOk(M), M}
             end, 20000),
    SettleMs = erlang:monotonic_time(millisecond) - T0,
    call(A, ?MODULE, mem_sampler_stop, []),
    Peak = call(A, ?MODULE, job_await, [Sampler, 10000]),
    ?assertEqual(#{count => 0, bytes => 0}, call(A, ?MODULE, sink_stats, [])),
    io:format(user, "~n    [~s] killed after ~b MiB in, ~b MiB out; nodedown after ~b ms (~p); "
              "A erlang:memory(total) ~s before, ~s peak, ~s after; RSS ~s before, ~s peak, "
              "~s after (~s ~b ms after nodedown) ",
              [Carrier, Rx bsr 20, Tx bsr 20, Down - TKill, Reason,
               mib(maps:get(total, Before)), mib(maps:get(total, Peak)),
               mib(maps:get(total, After)), mib(maps:get(rss, Before)),
               mib(maps:get(rss, Peak)), mib(maps:get(rss, After)),
               case {Settled, Rss} of
                   {ok, _} -> "back";
                   {timeout, report} -> "RSS not back: known issue, not asserted here; "
                                        "gave up";
                   {timeout, assert} -> "not back; gave up"
               end, SettleMs]),
    ?assert(TotalOk(After)),
    Rss =:= assert andalso ?assertEqual(ok, Settled).

%%% ------------------------------------------------------------------
%%% Load
%%% ------------------------------------------------------------------

t_load(Reg) ->
    Peers = ?P:start_many(Reg, [#{prefix => "l" ++ integer_to_list(I), ticktime => 15}
                                || I <- lists:seq(1, ?LOAD_NODES)]),
    Nodes = [?P:nodename(P) || P <- Peers],
    [?P:connect(P, Q) || P <- Peers, Q <- Peers, ?P:nodename(P) < ?P:nodename(Q)],
    [?assertEqual(lists:sort(Nodes -- [?P:nodename(P)]), lists:sort(call(P, erlang, nodes, [])))
     || P <- Peers],
    [call(P, ?MODULE, watch_start, []) || P <- Peers],
    Samplers = [call(P, ?MODULE, job_start, [?MODULE, mem_sampler, [100]]) || P <- Peers],
    Opts = #{duration_ms => ?LOAD_SECS * 1000, window => 2000, ack_every => 250},
    Jobs = [call(P, ?MODULE, job_start,
                 [?MODULE, run_pairs,
                  [[{I, N} || {I, N} <- lists:zip(lists:seq(1, ?LOAD_NODES - 1),
                                                  Nodes -- [?P:nodename(P)])], Opts]])
            || P <- Peers],
    Results = [call(P, ?MODULE, job_await, [J, (?LOAD_SECS + 90) * 1000],
                    (?LOAD_SECS + 95) * 1000) || {P, J} <- lists:zip(Peers, Jobs)],
    [call(P, ?MODULE, mem_sampler_stop, []) || P <- Peers],
    Peaks = [call(P, ?MODULE, job_await, [S, 10000]) || {P, S} <- lists:zip(Peers, Samplers)],
    Received = lists:sum([maps:get(received, R) || R <- Results]),
    Ms = lists:max([maps:get(ms, R) || R <- Results]),
    io:format(user, "~n    ~b messages in ~b ms: ~b msg/s in all (~s per node); peak "
              "erlang:memory(total) per node ~s MiB, peak RSS ~s MiB ",
              [Received, Ms, rate(Received, Ms),
               lists:join("/", [integer_to_list(rate(maps:get(received, R), maps:get(ms, R)))
                                || R <- Results]),
               lists:join("/", [integer_to_list(maps:get(total, Pk) bsr 20) || Pk <- Peaks]),
               lists:join("/", [integer_to_list(maps:get(rss, Pk) bsr 20) || Pk <- Peaks])]),
    [?assertEqual({?P:nodename(P), []}, {?P:nodename(P), maps:get(bad, R)})
     || {P, R} <- lists:zip(Peers, Results)],
    [?assertEqual(maps:get(sent, R), maps:get(received, R)) || R <- Results],
    [?assert(maps:get(received, R) > 0) || R <- Results],
    [?assertEqual({?P:nodename(P), []}, {?P:nodename(P), call(P, ?MODULE, watch_events, [])})
     || P <- Peers],
    [?assert(maps:get(total, Pk) < ?LOAD_MAX_TOTAL_MIB bsl 20) || Pk <- Peaks],
    [?assert(maps:get(rss, Pk) < ?LOAD_MAX_RSS_MIB bsl 20) || Pk <- Peaks].

%%% ------------------------------------------------------------------
%%% Restart storm
%%% ------------------------------------------------------------------

t_restart_storm(Reg) ->
    Tick = 4,
    [A, B, R0] = ?P:start_many(Reg, [#{prefix => "a", ticktime => Tick},
                                     #{prefix => "b", ticktime => Tick},
                                     #{prefix => "r", ticktime => Tick}]),
    NR = ?P:nodename(R0),
    RName = maps:get(name, R0),
    Others = [A, B],
    [call(P, ?MODULE, watch_start, []) || P <- Others],
    call(R0, ?MODULE, sink_start, []),
    ?P:connect(A, B),
    %% The others send to R every 10 ms; their sends connect them to R.
    [call(P, ?MODULE, pinger_start, [{?SINK, NR}, 10]) || P <- Others],
    [{ok, _, _} = call(P, ?MODULE, watch_wait, [nodeup, NR, 1, 20000], 25000) || P <- Others],
    Before = [settled_counts(P, undefined) || P <- Others],
    T0 = erlang:monotonic_time(millisecond),
    {_, Times} =
        lists:foldl(
          fun(I, {R, Acc}) ->
                  Kill = I rem ?RESTART_KILL_EVERY =:= 0,
                  TStop = os:system_time(millisecond),
                  case Kill of
                      true -> ok = ?P:kill(R);
                      false -> ok = ?P:stop(R)
                  end,
                  Downs = [element(2, {ok, _, _} = call(P, ?MODULE, watch_wait,
                                                        [nodedown, NR, I, 30000], 35000))
                           || P <- Others],
                  TUp = os:system_time(millisecond),
                  R1 = ?P:start(Reg, #{name => RName, ticktime => Tick}),
                  call(R1, ?MODULE, sink_start, []),
                  Ups = [element(2, {ok, _, _} = call(P, ?MODULE, watch_wait,
                                                      [nodeup, NR, I + 1, 30000], 35000))
                         || P <- Others],
                  {R1, [{Kill, lists:max(Downs) - TStop, lists:max(Ups) - TUp} | Acc]}
          end, {R0, []}, lists:seq(1, ?RESTARTS)),
    Storm = erlang:monotonic_time(millisecond) - T0,
    After = [settled_counts(P, Bf) || {P, Bf} <- lists:zip(Others, Before)],
    Sent = [call(P, ?MODULE, pinger_stop, []) || P <- Others],
    [?assertEqual(#{nodedown => ?RESTARTS, nodeup => ?RESTARTS + 1}, event_counts(P, NR))
     || P <- Others],
    StopDowns = [D || {false, D, _} <- Times],
    KillDowns = [D || {true, D, _} <- Times],
    io:format(user, "~n    ~b restarts in ~b ms; nodedown after stop ~b-~b ms, after kill -9 "
              "~b-~b ms; nodeup on both ~b-~b ms after the restart began (boot included); pings sent ~w; "
              "counts before ~w, after ~w; erlang:memory(total) before ~s, after ~s MiB ",
              [?RESTARTS, Storm, lists:min(StopDowns), lists:max(StopDowns),
               lists:min(KillDowns), lists:max(KillDowns),
               lists:min([U || {_, _, U} <- Times]), lists:max([U || {_, _, U} <- Times]),
               Sent, [maps:without([memory], C) || C <- Before],
               [maps:without([memory], C) || C <- After],
               lists:join("/", [integer_to_list(maps:get(memory, C) bsr 20) || C <- Before]),
               lists:join("/", [integer_to_list(maps:get(memory, C) bsr 20) || C <- After])]),
    [?assertEqual(maps:without([memory], Bf), maps:without([memory], Af))
     || {Bf, Af} <- lists:zip(Before, After)].

%% The counts of a node once they stop moving (or are back to Expected): polled, bounded.
%% global:sync/0 first: global's per-connection resolver processes are gone once it returns.
settled_counts(P, Expected) ->
    ok = call(P, global, sync, []),
    Target = case Expected of
                 undefined -> undefined;
                 _ -> maps:without([memory], Expected)
             end,
    {_, Counts} =
        poll(fun() ->
                     C1 = call(P, ?MODULE, counts, []),
                     C2 = call(P, ?MODULE, counts, []),
                     Stable = maps:without([memory], C1) =:= maps:without([memory], C2),
                     {Stable andalso (Target =:= undefined orelse
                                      maps:without([memory], C2) =:= Target), C2}
             end, 30000),
    Counts.

%%% ------------------------------------------------------------------
%%% Runner-side helpers
%%% ------------------------------------------------------------------

call(Peer, M, F, A) -> ?P:call(Peer, M, F, A).
call(Peer, M, F, A, Timeout) -> ?P:call(Peer, M, F, A, Timeout).


%% Polls Fun every 50 ms until it returns true (or {true, V}); gives up after TimeoutMs.
%% {ok, V} or {timeout, LastV}.
poll(Fun, TimeoutMs) ->
    poll(Fun, erlang:monotonic_time(millisecond) + TimeoutMs, undefined).

poll(Fun, Deadline, _Last) ->
    {Done, V} = case Fun() of
                    true -> {true, true};
                    false -> {false, false};
                    {D, X} -> {D, X}
                end,
    case Done of
        true -> {ok, V};
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> {timeout, V};
                false -> receive after 50 -> poll(Fun, Deadline, V) end
            end
    end.

event_counts(P, Node) ->
    Events = call(P, ?MODULE, watch_events, []),
    #{nodedown => length([x || {nodedown, N, _} <- Events, N =:= Node]),
      nodeup => length([x || {nodeup, N, _} <- Events, N =:= Node])}.

rate(_N, 0) -> 0;
rate(N, Ms) -> N * 1000 div Ms.

mib(Bytes) -> io_lib:format("~.1f MiB", [Bytes / 1048576]).

format_stats(#{} = S) when map_size(S) =:= 0 -> "no carrier stats";
format_stats(S) ->
    lists:join(", ", [io_lib:format("~s ~p", [K, V]) || {K, V} <- lists:sort(maps:to_list(S))]).

%%% ------------------------------------------------------------------
%%% Run on the nodes: jobs
%%% ------------------------------------------------------------------

%% @doc Runs apply(M, F, A) in a new process and keeps the result for one job_await/2.
job_start(M, F, A) ->
    spawn(fun() ->
                  {W, Mon} = spawn_monitor(fun() -> exit({'$job', apply(M, F, A)}) end),
                  Result = receive
                               {'DOWN', Mon, process, W, {'$job', R}} -> {ok, R};
                               {'DOWN', Mon, process, W, Other} -> {crashed, Other}
                           end,
                  receive {'$await', From, Ref} -> From ! {Ref, Result} end
          end).

%% @doc The result of a job (waits up to Timeout ms).
job_await(Job, Timeout) ->
    Mon = monitor(process, Job),
    Ref = make_ref(),
    Job ! {'$await', self(), Ref},
    receive
        {Ref, {ok, R}} -> demonitor(Mon, [flush]), R;
        {Ref, {crashed, Why}} -> error({job_crashed, Why});
        {'DOWN', Mon, process, Job, Why} -> error({job_gone, Why})
    after Timeout ->
            exit(Job, kill),
            error(job_timeout)
    end.

%%% ------------------------------------------------------------------
%%% Run on the nodes: sequence-numbered streams
%%% ------------------------------------------------------------------

%% @doc One sender per {Id, Node} (a receiver is spawned on Node), all at once. Options as
%% seq_send/3. Returns #{sent, received, ms, bad => [reports of pairs that are not complete
%% and in order]}.
run_pairs(Dests, Opts) ->
    T0 = erlang:monotonic_time(millisecond),
    AckEvery = maps:get(ack_every, Opts, 500),
    Ws = [spawn_monitor(fun() ->
                                Rx = spawn(Node, ?MODULE, seq_rx, [Id, AckEvery]),
                                exit({'$pair', seq_send(Rx, Id, Opts)})
                        end) || {Id, Node} <- Dests],
    Reports = [receive
                   {'DOWN', M, process, W, {'$pair', Rep}} -> Rep;
                   {'DOWN', M, process, W, Other} -> #{crashed => Other}
               end || {W, M} <- Ws],
    Ms = erlang:monotonic_time(millisecond) - T0,
    #{sent => lists:sum([maps:get(sent, R, 0) || R <- Reports]),
      received => lists:sum([maps:get(received, R, 0) || R <- Reports]),
      ms => Ms,
      bad => [R || R <- Reports, not pair_ok(R)]}.

pair_ok(#{sent := S, received := S, last := S, out_of_order := 0}) -> true;
pair_ok(_) -> false.

%% @doc Sends {seq, Id, I, self()} for I = 1, 2, ... to Rx (a pid or {Name, Node}) until
%% `count' messages or `duration_ms' (whichever is given); at most `window' (default 5000)
%% unacknowledged; `pace_per_ms' messages per millisecond (default: as fast as the window
%% lets); `progress' (true: sent/acknowledged counts in the counters of progress_init/0).
%% Then asks the receiver for its report: #{id, sent, received, last, out_of_order,
%% first_error, ms}.
seq_send(Rx, Id, Opts) ->
    T0 = erlang:monotonic_time(millisecond),
    S = #{rx => Rx, id => Id,
          count => maps:get(count, Opts, infinity),
          deadline => case maps:find(duration_ms, Opts) of
                          {ok, D} -> T0 + D;
                          error -> infinity
                      end,
          window => maps:get(window, Opts, 5000),
          pace => maps:get(pace_per_ms, Opts, undefined),
          progress => case maps:get(progress, Opts, false) of
                          true -> persistent_term:get(?PROGRESS);
                          false -> undefined
                      end},
    Report = send_loop(S, 1, 0),
    Report#{id => Id, ms => erlang:monotonic_time(millisecond) - T0}.

send_loop(#{id := Id, count := N, deadline := Deadline, window := Window} = S, I, Acked0) ->
    Acked = drain_acks(Id, Acked0),
    InFlight = I - 1 - Acked,
    Done = (N =/= infinity andalso I > N) orelse
        (Deadline =/= infinity andalso erlang:monotonic_time(millisecond) >= Deadline),
    if
        Done ->
            finish(S, I - 1, Acked);
        InFlight >= Window ->
            receive
                {seq_ack, Id, J} -> send_loop(S, I, max(J, Acked))
            after ?STALL_MS ->
                    #{sent => I - 1, received => Acked, last => Acked, out_of_order => 0,
                      first_error => {no_ack_for_ms, ?STALL_MS}}
            end;
        true ->
            Batch0 = case S of
                         #{pace := undefined} -> 100;
                         #{pace := P} -> P
                     end,
            Batch = lists:min([Batch0, Window - InFlight] ++
                                  [N - I + 1 || N =/= infinity]),
            send_batch(maps:get(rx, S), Id, I, I + Batch - 1),
            progress(S, I + Batch - 1, Acked),
            case S of
                #{pace := undefined} -> ok;
                _ -> receive after 1 -> ok end
            end,
            send_loop(S, I + Batch, Acked)
    end.

send_batch(_Rx, _Id, I, Last) when I > Last ->
    ok;
send_batch(Rx, Id, I, Last) ->
    Rx ! {seq, Id, I, self()},
    send_batch(Rx, Id, I + 1, Last).

drain_acks(Id, Acked) ->
    receive
        {seq_ack, Id, J} -> drain_acks(Id, max(J, Acked))
    after 0 ->
            Acked
    end.

progress(#{progress := undefined}, _Sent, _Acked) -> ok;
progress(#{progress := C}, Sent, Acked) ->
    counters:put(C, 1, Sent),
    counters:put(C, 2, Acked).

finish(#{rx := Rx, id := Id} = S, Last, Acked) ->
    Rx ! {seq_end, Id, Last, self()},
    receive
        {seq_report, Id, Report} ->
            progress(S, Last, maps:get(received, Report)),
            Report#{sent => Last}
    after ?STALL_MS ->
            #{sent => Last, received => Acked, last => Acked, out_of_order => 0,
              first_error => {no_report_for_ms, ?STALL_MS}}
    end.

%% @doc Receives one sender's stream: checks that I goes 1, 2, 3, ... (each message once, in
%% order), acknowledges every AckEvery, reports at {seq_end, ...}.
seq_rx(Id, AckEvery) ->
    rx_loop(Id, AckEvery, 1, 0, 0, none).

%% @doc seq_rx/2 in a process registered as Name (outlives connections).
seq_rx_register(Name, Id, AckEvery) ->
    Parent = self(),
    Ref = make_ref(),
    Pid = spawn(fun() ->
                        true = register(Name, self()),
                        Parent ! Ref,
                        seq_rx(Id, AckEvery)
                end),
    receive Ref -> Pid after 5000 -> error(register_timeout) end.

rx_loop(Id, AckEvery, Next, Got, Bad, FirstErr) ->
    receive
        {seq, Id, I, From} ->
            case I rem AckEvery of
                0 -> From ! {seq_ack, Id, I};
                _ -> ok
            end,
            case I of
                Next -> rx_loop(Id, AckEvery, Next + 1, Got + 1, Bad, FirstErr);
                _ ->
                    First = case FirstErr of
                                none -> {expected, Next, got, I};
                                _ -> FirstErr
                            end,
                    rx_loop(Id, AckEvery, I + 1, Got + 1, Bad + 1, First)
            end;
        {seq_end, Id, _Last, From} ->
            From ! {seq_report, Id, #{received => Got, last => Next - 1,
                                      out_of_order => Bad, first_error => FirstErr}}
    after ?STALL_MS ->
            exit({stalled, Id, {expected, Next}})
    end.

%% @doc Counters for the sender's progress (seq_send/3 with `progress => true').
progress_init() ->
    persistent_term:put(?PROGRESS, counters:new(2, [])).

%% @doc {Sent, Acknowledged} so far.
progress() ->
    C = persistent_term:get(?PROGRESS),
    {counters:get(C, 1), counters:get(C, 2)}.

%%% ------------------------------------------------------------------
%%% Run on the nodes: node events
%%% ------------------------------------------------------------------

%% @doc A registered process that records nodeup/nodedown (net_kernel:monitor_nodes/2 with
%% nodedown_reason), each with the wall-clock time (ms) it arrived.
watch_start() ->
    Parent = self(),
    Ref = make_ref(),
    spawn(fun() ->
                  true = register(?WATCH, self()),
                  ok = net_kernel:monitor_nodes(true, [nodedown_reason]),
                  Parent ! Ref,
                  watch_loop([], [])
          end),
    receive Ref -> ok after 5000 -> error(watch_start_timeout) end.

%% Events newest first: {Time, {nodeup | nodedown, Node, Info}}.
watch_loop(Events, Waiters) ->
    receive
        {'$wait', From, Ref, Kind, Node, Count} = W ->
            case nth_event(Kind, Node, Count, Events) of
                {ok, Reply} -> From ! {Ref, Reply}, watch_loop(Events, Waiters);
                none -> watch_loop(Events, [W | Waiters])
            end;
        {'$events', From, Ref} ->
            From ! {Ref, [E || {_, E} <- lists:reverse(Events)]},
            watch_loop(Events, Waiters);
        {Kind, _Node, _Info} = E when Kind =:= nodeup; Kind =:= nodedown ->
            Events1 = [{os:system_time(millisecond), E} | Events],
            Waiters1 = [W || {'$wait', From, Ref, K, N, C} = W <- Waiters,
                             case nth_event(K, N, C, Events1) of
                                 {ok, Reply} -> From ! {Ref, Reply}, false;
                                 none -> true
                             end],
            watch_loop(Events1, Waiters1)
    end.

nth_event(Kind, Node, Count, Events) ->
    Matching = [{T, Info} || {T, {K, N, Info}} <- lists:reverse(Events), K =:= Kind, N =:= Node],
    case length(Matching) >= Count of
        true ->
            {T, Info} = lists:nth(Count, Matching),
            {ok, {T, proplists:get_value(nodedown_reason, Info)}};
        false -> none
    end.

%% @doc Waits until the watcher has seen Count events Kind (nodeup | nodedown) for Node:
%% {ok, WallClockMsOfTheCountth, NodedownReason} or {timeout, Events}.
watch_wait(Kind, Node, Count, Timeout) ->
    Ref = make_ref(),
    ?WATCH ! {'$wait', self(), Ref, Kind, Node, Count},
    receive
        {Ref, {T, Reason}} -> {ok, T, Reason}
    after Timeout ->
            {timeout, watch_events()}
    end.

%% @doc Every event so far, oldest first: {nodeup | nodedown, Node, Info}.
watch_events() ->
    Ref = make_ref(),
    ?WATCH ! {'$events', self(), Ref},
    receive {Ref, Events} -> Events after 5000 -> error(watcher_not_answering) end.

%%% ------------------------------------------------------------------
%%% Run on the nodes: sinks, big messages, echo, pinger
%%% ------------------------------------------------------------------

%% @doc A registered process that counts what it gets.
sink_start() ->
    Parent = self(),
    Ref = make_ref(),
    spawn(fun() ->
                  true = register(?SINK, self()),
                  Parent ! Ref,
                  sink_loop(0, 0)
          end),
    receive Ref -> ok after 5000 -> error(sink_start_timeout) end.

sink_loop(Count, Bytes) ->
    receive
        {'$stats', From, Ref} ->
            From ! {Ref, #{count => Count, bytes => Bytes}},
            sink_loop(Count, Bytes);
        {big, Bin} ->
            sink_loop(Count + 1, Bytes + byte_size(Bin));
        _ ->
            sink_loop(Count, Bytes)
    end.

%% @doc {big, _} messages the sink got and their bytes.
sink_stats() ->
    Ref = make_ref(),
    ?SINK ! {'$stats', self(), Ref},
    receive {Ref, S} -> S after 5000 -> error(sink_not_answering) end.

%% @doc Sends {big, Binary of Size bytes} to To from a new process, and returns at once (the
%% send itself takes as long as the connection needs to take most of the message).
send_big(To, Size) ->
    _ = spawn(fun() -> To ! {big, binary:copy(<<"0123456789abcdef">>, Size div 16)} end),
    ok.

%% @doc An rpc to Node with a 1 MiB binary that comes back: {Size, Identical}.
echo(Node) ->
    Bin = crypto:strong_rand_bytes(1048576),
    Back = erpc:call(Node, erlang, binary_part, [Bin, 0, byte_size(Bin)], 10000),
    {byte_size(Back), Back =:= Bin}.

%% @doc A registered process that sends {ping, node(), I} to To every IntervalMs.
pinger_start(To, IntervalMs) ->
    Parent = self(),
    Ref = make_ref(),
    spawn(fun() ->
                  true = register(?PINGER, self()),
                  Parent ! Ref,
                  pinger_loop(To, IntervalMs, 0)
          end),
    receive Ref -> ok after 5000 -> error(pinger_start_timeout) end.

pinger_loop(To, IntervalMs, I) ->
    receive
        {'$stop', From, Ref} -> From ! {Ref, I}
    after IntervalMs ->
            To ! {ping, node(), I},
            pinger_loop(To, IntervalMs, I + 1)
    end.

%% @doc Stops the pinger: how many it sent.
pinger_stop() ->
    Ref = make_ref(),
    ?PINGER ! {'$stop', self(), Ref},
    receive {Ref, I} -> I after 5000 -> error(pinger_not_answering) end.

%%% ------------------------------------------------------------------
%%% Run on the nodes: memory and counts
%%% ------------------------------------------------------------------

%% @doc erlang:memory(total) and the OS RSS, after a garbage collection of every process.
mem_settled() ->
    [erlang:garbage_collect(P) || P <- processes()],
    #{total => erlang:memory(total), binary => erlang:memory(binary), rss => rss()}.

%% VmRSS of this OS process, bytes.
rss() ->
    {ok, Status} = file:read_file("/proc/self/status"),
    {match, [Kb]} = re:run(Status, "VmRSS:\\s+(\\d+) kB", [{capture, all_but_first, list}]),
    list_to_integer(Kb) * 1024.

%% @doc Samples erlang:memory(total) and the RSS every IntervalMs until mem_sampler_stop/0;
%% returns the peaks.
mem_sampler(IntervalMs) ->
    true = register(?MEM, self()),
    mem_loop(IntervalMs, #{total => 0, rss => 0}).

mem_loop(IntervalMs, Peak) ->
    #{total := T, rss := R} = Peak,
    Peak1 = Peak#{total := max(T, erlang:memory(total)), rss := max(R, rss())},
    receive
        '$stop' -> Peak1
    after IntervalMs ->
            mem_loop(IntervalMs, Peak1)
    end.

mem_sampler_stop() ->
    ?MEM ! '$stop',
    ok.

%% @doc What must not leak: processes, ports, connected nodes, quic_dist connections (when
%% the carrier has quic_dist:connections/0), and memory (for information).
counts() ->
    Quic = case code:ensure_loaded(quic_dist) of
               {module, quic_dist} ->
                   case erlang:function_exported(quic_dist, connections, 0) of
                       true -> length(quic_dist:connections());
                       false -> not_available
                   end;
               _ -> not_available
           end,
    #{processes => erlang:system_info(process_count),
      ports => erlang:system_info(port_count),
      nodes => length(nodes(connected)),
      quic_connections => Quic,
      memory => erlang:memory(total)}.

%% @doc A few numbers from quic_dist:info/1 about the link to Node (lost packets, RTT,
%% congestion window) when the carrier is quic_dist and reports them; otherwise #{}.
link_stats(Node) ->
    try quic_dist:info(Node) of
        {ok, Info} -> find_keys([lost_packets, quic_packets_sent, rtt_us, cwnd], Info);
        _ -> #{}
    catch
        _:_ -> #{}
    end.

find_keys(Keys, Map) when is_map(Map) ->
    maps:fold(fun(K, V, Acc) ->
                      case lists:member(K, Keys) of
                          true when is_number(V) -> Acc#{K => V};
                          _ when is_map(V) -> maps:merge(Acc, find_keys(Keys, V));
                          _ -> Acc
                      end
              end, #{}, Map);
find_keys(_Keys, _) ->
    #{}.
