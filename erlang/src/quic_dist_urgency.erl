%%% @doc The scheduling priority of a connection's controller and input handler in data mode.
%%%
%%% Over TCP distribution a message waits for a scheduler once, for its receiving process: ERTS
%%% runs port I/O between processes. Over quic_dist it also waits for the controller (sending)
%%% and the input handler (receiving), processes like any other. On a node whose schedulers
%%% are busy with normal work those two waits tripled round trips (400 spinning processes:
%%% 35 ms against TCP's 11). So a controller or input handler runs at `high' priority when
%%%   * it moves little data: a token bucket, refilled at ?RATE bytes per microsecond up to
%%%     ?BURST, and nothing when it is empty. Bulk data goes at `normal' priority and shares
%%%     the schedulers with the processes that produce and consume it (raised at every idle
%%%     moment instead, without the bucket, it took them the CPU: 1 MiB messages moved a
%%%     third slower, 16 MiB ones 45%);
%%%   * and, judged when it goes idle, the node has runnable processes (the socket poller,
%%%     which runs at low priority while datagrams come, counts): when nothing else waits for
%%%     a scheduler, `high' would buy nothing.
%%% The bucket goes no lower than -?BURST: about 2 ms after a transfer ends the process can be
%%% `high' again.
-module(quic_dist_urgency).

-export([new/0, handled/2, decide/4, normal/1]).
-export_type([urgency/0]).

-define(RATE, 64).
-define(BURST, 65536).

-opaque urgency() :: {Budget :: integer(), At :: integer(), high | normal}.

%% @doc The state of a process that runs at normal priority now.
-spec new() -> urgency().
new() ->
    {0, now_us(), normal}.

%% @doc Counts Bytes handled (0: the process is going idle) and sets the calling process's
%% priority accordingly.
-spec handled(non_neg_integer(), urgency()) -> urgency().
handled(Bytes, {_, _, Was} = U) ->
    RunQueue = case Bytes of
                   0 -> erlang:statistics(run_queue);
                   _ -> 0
               end,
    {_, _, Now} = U1 = decide(Bytes, now_us(), RunQueue, U),
    _ = Now =:= Was orelse process_flag(priority, Now),
    U1.

%% @doc The state of a process that sets its own priority for a while, to normal or lower (an
%% input handler's turn at reading the socket): counted as normal, so that handled/2 with
%% Bytes > 0 leaves the priority alone, and the next handled(0, _) decides again.
-spec normal(urgency()) -> urgency().
normal({Budget, At, _Was}) ->
    {Budget, At, normal}.

%% @doc The new state after Bytes handled at NowUs, RunQueue (the node's runnable processes,
%% looked at only when going idle) then: pure, for handled/2 and the unit tests.
-spec decide(non_neg_integer(), integer(), non_neg_integer(), urgency()) -> urgency().
decide(Bytes, NowUs, RunQueue, {Budget0, At, Was}) ->
    Budget = max(-?BURST, min(?BURST, Budget0 + (NowUs - At) * ?RATE) - Bytes),
    Priority = if
                   Budget =< 0 -> normal;
                   Bytes > 0 -> Was;
                   RunQueue > 0 -> high;
                   true -> normal
               end,
    {Budget, NowUs, Priority}.

now_us() ->
    erlang:monotonic_time(microsecond).
