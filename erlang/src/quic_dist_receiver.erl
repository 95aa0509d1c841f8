%%% @doc The process that reads the node's UDP socket, and the processes that take turns at
%%% reading it while datagrams are expected.
%%%
%%% ```
%%%  erts check_io ──{select, _, undefined, ready_input}──> receiver (high priority, one per node)
%%%  input handler ──{run_tasks, Conn}─────────────────────>   │ endpoint_receive(Ep): one NIF call
%%%    (its acknowledgement let a stream reader go on)        │ reads up to 8 datagrams, runs QUIC
%%%                                                           │ on this scheduler, delivers packets
%%%                                                           │ to the input handlers, re-arms the
%%%                                                           │ select; conn_run_tasks(Conn) runs
%%%                                                           │ the readers let go on
%%%                 a datagram came: {quic_dist_turn, Turn} ──┤ (no select armed meanwhile)
%%%                                                           ▼
%%%  the turn's holder, bound to scheduler 1 and at low priority while it holds it: the
%%%    poller (one per node), or the input handler of the node's only connection while its
%%%    datagrams come one at a time. turn_step/1 in a loop: endpoint_poll(Ep), erlang:yield(),
%%%    until no datagram came for `poll_us' (up to 10x that on a busy link); then
%%%    {quic_dist_turn_end, Holder, ...} to the receiver, which arms the select again, or at
%%%    once hands the next turn to the other kind of holder when the traffic changed
%%%                                                           ▼
%%%                               input handlers, acceptor, connecting processes (messages)
%%% '''
%%%
%%% No thread of the NIF sits between the socket and the BEAM: the datagram is read, decrypted
%%% and delivered by the scheduler that runs the receiver or the turn's holder. Each NIF call
%%% has a bounded amount of work, and a socket with more waiting answers the next select at
%%% once.
%%%
%%% Why turns: a select wakes the runtime's poll thread for every datagram, and that thread
%%% must get a core before a scheduler hears of the datagram; on a machine with few cores the
%%% schedulers' own busy wait holds them, and the idle round trip moved between 54 and 176 µs
%%% from one run to the next (TCP distribution's socket is a port, polled by the schedulers
%%% themselves). While datagrams keep coming, a turn reads the socket in the time its
%%% scheduler would spend busy-waiting: at low priority it runs only when that scheduler has
%%% nothing else to do, and bound to scheduler 1 (where the runtime keeps a light load) it does
%%% not make the runtime wake a second scheduler to share what looks like load. When its
%%% scheduler is busy the holder gives up (its steps more than ?POLL_STARVED_US µs apart) and
%%% the select takes over; if it does not get to run for a millisecond, the receiver arms the
%%% select beside it.
%%%
%%% Why an input handler holds turns: the packets a read brings are then handed to the runtime
%%% by the process that read them (they come back to it as a message to itself), one process
%%% hand-off less per datagram, about a fifth of a sustained round trip (bench/README). Only
%%% while datagrams come one at a time (?LIGHT_STREAK reads in a row): bulk data and bursts of
%%% small messages go back to the poller (?BURST_STREAK reads of several), so that the input
%%% handler feeds the runtime on the other scheduler while the poller reads and decrypts. Only
%%% for the node's only connection in data mode: another connection's packets would wait for
%%% this one's processes. An input handler's packets reach it in the order the NIF read them,
%%% whoever reads, so a turn may change hands at any time. Between datagrams the input handler
%%% keeps its core (no `sched_yield' on an empty read) for ?KEEP_CORE_US µs: a thread put aside
%%% by the kernel takes tens of microseconds to get it back, most of a round trip; beyond
%%% that it gives way, so that a thread that needs the core (a local peer node's) does not wait
%%% for the kernel to preempt a spinning one (the round trip's p99.9 doubled without it).
-module(quic_dist_receiver).

-export([start/2, stop/0, run_tasks/1, turns/0]).
%% For the input handlers (quic_dist_conn).
-export([input_ready/1, turn_begin/1, turn_step/1, turn_release/1]).
-export_type([turn/0]).

%% For the unit tests.
-export([turn_window/3, read_streak/3, yield_if_empty/2]).

-include_lib("kernel/include/logger.hrl").

-define(NAME, quic_dist_receiver).
%% The poller gives up when its calls are further apart than this, µs (its scheduler is busy).
-define(POLL_STARVED_US, 100).
%% A poller's turn reads on for `poll_us' after each datagram. When a turn that read at least
%% ?BUSY_DATAGRAMS datagrams is followed soon by the next (the select saw a datagram less than
%% ?BUSY_WINDOW_FACTOR times `poll_us' after it ended), it gave up too early on a busy link,
%% and the next turn reads on twice as long, up to that bound. Why: while bulk data arrives
%% through a narrowed send window (small messages beside it), its datagrams come in bursts more
%% than `poll_us' apart, and every wake-up through the select costs most then (the poll thread
%% has to win a core from busy schedulers): round trips beside an 8 MiB stream had a p99 of
%% 0.8-1.6 ms. Traffic that trickles (a datagram or two per turn) keeps the short window and
%% its low CPU cost.
-define(BUSY_DATAGRAMS, 4).
-define(BUSY_WINDOW_FACTOR, 10).
%% The receiver arms the select beside a holder whose turn has not stepped for this long, ms.
-define(POLLER_SILENT_MS, 1).
%% Reads in a row of one datagram each after which the poller hands its turn to the input
%% handler of the node's only connection, and of several after which that input handler hands
%% it back.
-define(LIGHT_STREAK, 16).
-define(BURST_STREAK, 4).
%% How long an input handler holding a turn keeps its core between datagrams, µs.
-define(KEEP_CORE_US, 100).

%% @doc Starts reading `Ep''s socket (once per node; a running receiver is kept), with a
%% poller that reads it for `PollUs' µs after each datagram (0: no poller).
-spec start(reference(), non_neg_integer()) -> {ok, pid()}.
start(Ep, PollUs) ->
    Parent = self(),
    Ref = make_ref(),
    Pid = spawn_opt(fun() -> init(Parent, Ref, Ep, PollUs) end, [{priority, high}]),
    MRef = monitor(process, Pid),
    receive
        {Ref, Result} ->
            demonitor(MRef, [flush]),
            Result;
        {'DOWN', MRef, process, Pid, Reason} ->
            error({receiver_failed, Reason})
    end.

%% @doc Stops the receiver (before the endpoint closes), waiting until it is gone.
-spec stop() -> ok.
stop() ->
    case whereis(?NAME) of
        undefined -> ok;
        Pid ->
            MRef = monitor(process, Pid),
            Pid ! stop,
            receive {'DOWN', MRef, process, Pid, _} -> ok end
    end.

%% @doc How many turns at reading the socket the node's receiver gave to its poller and to
%% input handlers, since it started (both 0 without a receiver).
-spec turns() -> #{poller | input => non_neg_integer()}.
turns() ->
    case whereis(?NAME) of
        undefined -> #{poller => 0, input => 0};
        Pid ->
            MRef = monitor(process, Pid),
            Pid ! {turns, self(), MRef},
            receive
                {MRef, Turns} ->
                    demonitor(MRef, [flush]),
                    Turns;
                {'DOWN', MRef, process, Pid, _} ->
                    #{poller => 0, input => 0}
            end
    end.

%% @doc Has the receiver run the ready tasks of `Conn''s endpoint: stream readers that an input
%% handler's acknowledgement let go on (here, if the node has no receiver).
-spec run_tasks(reference()) -> ok.
run_tasks(Conn) ->
    case whereis(?NAME) of
        undefined -> quic_dist_nif:conn_run_tasks(Conn);
        Pid ->
            Pid ! {run_tasks, Conn},
            ok
    end.

%% The receiver's state. Inputs: input handlers of connections in data mode, which may take
%% a turn at reading (see input_ready/1); Next: who the next turn goes to; Last: the last
%% turn's window, the datagrams it read and when it ended; Turns: how many turns went to the
%% poller and to input handlers.
-record(r, {ep :: reference(),
            poller :: pid() | undefined,
            beat :: atomics:atomics_ref() | undefined,
            poll_us :: non_neg_integer(),
            inputs = #{} :: #{pid() => reference()},
            next = poller :: poller | input,
            last :: {pos_integer(), non_neg_integer(), integer()} | undefined,
            turns = #{poller => 0, input => 0} :: #{poller | input => non_neg_integer()}}).

%% A turn at reading the socket, held by the poller or by an input handler. DataAt: when the
%% last datagram came (at first, when the turn began); Last: the last step. Switch: what ends
%% the turn early so that the other kind of reader takes over (none: nothing does).
-record(turn, {ep :: reference(),
               receiver :: pid(),
               beat :: atomics:atomics_ref(),
               window :: pos_integer(),
               data_at :: integer(),
               last :: integer(),
               read = 0 :: non_neg_integer(),
               streak = 0 :: non_neg_integer(),
               switch :: none | light | burst}).
-opaque turn() :: #turn{}.

%% Registers the name (one receiver per node), starts the poller and arms the first select.
init(Parent, Ref, Ep, PollUs) ->
    try register(?NAME, self()) of
        true ->
            Parent ! {Ref, {ok, self()}},
            {Poller, Beat} = start_poller(PollUs),
            receive_and_arm(Ep),
            armed(#r{ep = Ep, poller = Poller, beat = Beat, poll_us = PollUs,
                     last = {max(PollUs, 1), 0, 0}})
    catch
        error:badarg ->
            Parent ! {Ref, {ok, whereis(?NAME)}}
    end.

%% The select is armed and nobody holds a turn: waits for readiness of the socket.
armed(#r{ep = Ep} = S) ->
    receive
        {select, _Watch, undefined, ready_input} when S#r.poller =:= undefined ->
            receive_and_arm(Ep),
            armed(S);
        {select, _Watch, undefined, ready_input} ->
            _ = poll(Ep, true),
            give_turn(S);
        Other ->
            armed(common(Other, S, undefined))
    end.

%% Hands the next turn to the input handler of the node's only connection (when the traffic
%% was light) or to the poller.
give_turn(#r{poller = Poller, beat = Beat, poll_us = PollUs, last = Last} = S) ->
    Now = erlang:monotonic_time(microsecond),
    Solo = solo(S),
    {Holder, Kind, Switch} = if
                                 S#r.next =:= input, is_pid(Solo) -> {Solo, input, burst};
                                 is_pid(Solo) -> {Poller, poller, light};
                                 true -> {Poller, poller, none}
                             end,
    Holder ! {quic_dist_turn, #turn{ep = S#r.ep, receiver = self(), beat = Beat,
                                    window = turn_window(PollUs, Last, Now),
                                    data_at = 0, last = 0, switch = Switch}},
    polled(S#r{turns = maps:update_with(Kind, fun(N) -> N + 1 end, S#r.turns)}, Holder,
           atomics:get(Beat, 1)).

%% Someone holds a turn, no select armed, until it ends. Beats: the count of turn steps when
%% last looked at.
polled(#r{ep = Ep, beat = Beat} = S, Holder, Beats) ->
    receive
        {quic_dist_turn_end, Holder, Why, Read, Window, Ended} ->
            turn_ended(S#r{last = {Window, Read, Ended}}, Why);
        {'DOWN', _, process, Holder, _} = Down ->
            S1 = common(Down, S, Holder),
            receive_and_arm(Ep),
            armed(S1);
        Other ->
            polled(common(Other, S, Holder), Holder, Beats)
    after ?POLLER_SILENT_MS ->
            case atomics:get(Beat, 1) of
                Beats ->
                    %% The holder has not got to run: read here, and arm the select beside it.
                    receive_and_arm(Ep),
                    polled_and_armed(S#r{next = poller}, Holder);
                Now ->
                    polled(S, Holder, Now)
            end
    end.

%% Both read the socket until the holder's turn ends; the select stays armed then.
polled_and_armed(#r{ep = Ep} = S, Holder) ->
    receive
        {select, _Watch, undefined, ready_input} ->
            receive_and_arm(Ep),
            polled_and_armed(S, Holder);
        {quic_dist_turn_end, Holder, _Why, Read, Window, Ended} ->
            armed(S#r{last = {Window, Read, Ended}});
        {'DOWN', _, process, Holder, _} = Down ->
            armed(common(Down, S, Holder));
        Other ->
            polled_and_armed(common(Other, S, Holder), Holder)
    end.

%% What follows the end of a turn: the other kind of reader at once when the traffic changed,
%% else the select.
turn_ended(#r{ep = Ep} = S, Why) when Why =:= idle; Why =:= starved ->
    Next = case Why of
               starved -> poller;
               idle -> S#r.next
           end,
    receive_and_arm(Ep),
    armed(S#r{next = Next});
turn_ended(S, light) ->
    give_turn(S#r{next = input});
turn_ended(S, Why) when Why =:= burst; Why =:= released ->
    give_turn(S#r{next = poller}).

%% Messages handled the same way in every state. Holder: who holds a turn now, if anyone.
common({run_tasks, Conn}, S, _Holder) ->
    ok = quic_dist_nif:conn_run_tasks(Conn),
    S;
common({input_ready, Pid}, #r{inputs = Inputs} = S, Holder) ->
    %% A second connection: an input handler holding a turn hands it back (it would deliver
    %% the other connection's packets by message, as the poller does, but from a scheduler
    %% that its own connection's processes want).
    _ = is_pid(Holder) andalso Holder =/= S#r.poller andalso (Holder ! quic_dist_turn_release),
    S#r{inputs = Inputs#{Pid => monitor(process, Pid)}};
common({'DOWN', MRef, process, Pid, _}, #r{inputs = Inputs} = S, _Holder) ->
    case Inputs of
        #{Pid := MRef} -> S#r{inputs = maps:remove(Pid, Inputs)};
        #{} -> S
    end;
common({turns, From, Ref}, S, _Holder) ->
    From ! {Ref, S#r.turns},
    S;
common(stop, S, _Holder) ->
    stop(S);
common(_Stray, S, _Holder) ->
    %% The end of a turn that a release crossed, or a select beside a turn: nothing to do.
    S.

%% The one input handler that may take turns, if there is exactly one.
solo(#r{inputs = Inputs}) when map_size(Inputs) =:= 1 ->
    [Pid] = maps:keys(Inputs),
    Pid;
solo(_) ->
    undefined.

%% Stops the poller (gone when this returns) and the select messages.
stop(#r{ep = Ep, poller = undefined}) ->
    ok = quic_dist_nif:endpoint_unwatch(Ep),
    exit(normal);
stop(#r{poller = Pid} = S) ->
    unlink(Pid),
    MRef = monitor(process, Pid),
    exit(Pid, kill),
    receive {'DOWN', MRef, process, Pid, _} -> ok end,
    stop(S#r{poller = undefined}).

%% @doc Offers the node's receiver the calling input handler (its connection is in data mode)
%% as a reader of the socket: while it is the node's only connection and the traffic is a
%% datagram at a time, the turns go to it, so that the process that reads a packet is the one
%% that hands it to the runtime. It then gets `{quic_dist_turn, Turn}' (see turn_step/1) and
%% may get `quic_dist_turn_release' (see turn_release/1).
-spec input_ready(pid()) -> ok.
input_ready(Pid) ->
    case whereis(?NAME) of
        undefined -> ok;
        Receiver ->
            Receiver ! {input_ready, Pid},
            ok
    end.

%% @doc Starts a turn handed over in `{quic_dist_turn, Turn}'.
-spec turn_begin(turn()) -> turn().
turn_begin(T) ->
    Now = erlang:monotonic_time(microsecond),
    T#turn{data_at = Now, last = Now}.

%% @doc One step of a turn: reads the socket once (its packets go out as messages) and yields;
%% `done' when the turn is over (reported to the receiver).
-spec turn_step(turn()) -> {continue, turn()} | done.
turn_step(#turn{ep = Ep, beat = Beat, last = Last, data_at = DataAt} = T) ->
    Now = erlang:monotonic_time(microsecond),
    atomics:add(Beat, 1, 1),
    N = case Now - Last > ?POLL_STARVED_US of
            true -> starved;
            false -> poll(Ep, yield_if_empty(T#turn.switch, Now - DataAt))
        end,
    case N of
        0 when Now - DataAt =< T#turn.window ->
            erlang:yield(),
            {continue, T#turn{last = Now}};
        N when is_integer(N), N > 0 ->
            T1 = T#turn{data_at = Now, last = Now, read = T#turn.read + N},
            case read_streak(T#turn.switch, N, T#turn.streak) of
                switch ->
                    turn_end(T1, T#turn.switch, Now);
                Streak ->
                    %% After a read too: the processes its datagrams woke (input handlers, the
                    %% receiver of a reply) go first. An endpoint_poll call costs a reduction
                    %% or so whatever it read, so on a busy link the reader used to keep its
                    %% scheduler for a whole time slice (1-6 ms) while they waited.
                    erlang:yield(),
                    {continue, T1#turn{streak = Streak}}
            end;
        0 ->
            turn_end(T, idle, Now);
        starved ->
            turn_end(T, starved, Now)
    end.

%% @doc Ends a turn at the receiver's request (a second connection came).
-spec turn_release(turn()) -> done.
turn_release(T) ->
    turn_end(T, released, erlang:monotonic_time(microsecond)).

turn_end(#turn{receiver = Receiver, read = Read, window = Window}, Why, Now) ->
    Receiver ! {quic_dist_turn_end, self(), Why, Read, Window, Now},
    done.

%% @private The streak of reads that call for the other kind of holder after a read of N
%% datagrams, or `switch' when it is long enough. Switch: `light' for the poller (single
%% datagrams: the input handler would save a hand-off), `burst' for an input handler (several:
%% the poller reads while the input handler feeds the runtime on the other scheduler), `none'.
-spec read_streak(none | light | burst, pos_integer(), non_neg_integer()) ->
          non_neg_integer() | switch.
read_streak(light, 1, Streak) when Streak + 1 >= ?LIGHT_STREAK -> switch;
read_streak(light, 1, Streak) -> Streak + 1;
read_streak(burst, N, Streak) when N > 1, Streak + 1 >= ?BURST_STREAK -> switch;
read_streak(burst, N, Streak) when N > 1 -> Streak + 1;
read_streak(_, _, _) -> 0.

%% @private Whether an empty read gives the core away (`sched_yield'), SinceUs after the turn's
%% last datagram: the poller's always (it reads for every connection, and bulk data moves
%% faster when it gives way), an input handler's after ?KEEP_CORE_US.
-spec yield_if_empty(none | light | burst, integer()) -> boolean().
yield_if_empty(burst, SinceUs) -> SinceUs > ?KEEP_CORE_US;
yield_if_empty(_, _SinceUs) -> true.

%% @private How long a turn starting at `Now' (µs) reads on after each datagram, from the last
%% turn's window, the datagrams it read and when it ended (see ?BUSY_DATAGRAMS).
-spec turn_window(pos_integer(), {pos_integer(), non_neg_integer(), integer()}, integer()) ->
          pos_integer().
turn_window(PollUs, {Window, Read, Ended}, Now) ->
    Max = PollUs * ?BUSY_WINDOW_FACTOR,
    case Read >= ?BUSY_DATAGRAMS andalso Now - Ended < Max of
        true -> min(Max, Window * 2);
        false -> PollUs
    end.

%% Starts the poller, bound to scheduler 1 where the runtime allows it (`{scheduler, N}' is an
%% undocumented spawn option of OTP 25): its pid and the counter of turn steps. None with a
%% window of 0.
start_poller(0) ->
    {undefined, undefined};
start_poller(_PollUs) ->
    Beat = atomics:new(1, []),
    Fun = fun poller_idle/0,
    Pid = try
              spawn_opt(Fun, [link, {priority, low}, {scheduler, 1}])
          catch
              error:badarg ->
                  spawn_opt(Fun, [link, {priority, low}])
          end,
    {Pid, Beat}.

%% The poller: waits for the receiver to hand it a turn.
poller_idle() ->
    receive
        {quic_dist_turn, T} -> poller_turn(turn_begin(T))
    end.

poller_turn(T) ->
    case turn_step(T) of
        {continue, T1} -> poller_turn(T1);
        done -> poller_idle()
    end.

%% Reads what waits without arming the select: the datagrams it read.
poll(Ep, YieldIfEmpty) ->
    case quic_dist_nif:endpoint_poll(Ep, YieldIfEmpty) of
        N when is_integer(N) -> N;
        {error, Reason} ->
            ?LOG_ERROR("quic_dist cannot read its UDP socket: ~ts", [Reason]),
            0
    end.

%% Reads what waits and asks for the next readiness message.
receive_and_arm(Ep) ->
    case quic_dist_nif:endpoint_receive(Ep) of
        ok -> ok;
        {error, Reason} ->
            %% The socket failed (it should not): log it and try again on the next readiness,
            %% rather than leave every connection of the node without input.
            ?LOG_ERROR("quic_dist cannot read its UDP socket: ~ts", [Reason])
    end.
