%%% @doc The process that reads the node's UDP socket, and the poller that reads it while
%%% datagrams are expected.
%%%
%%% ```
%%%  erts check_io ──{select, _, undefined, ready_input}──> receiver (high priority, one per node)
%%%  input handler ──{run_tasks, Conn}─────────────────────>   │ endpoint_receive(Ep): one NIF call
%%%    (its acknowledgement let a stream reader go on)        │ reads up to 8 datagrams, runs QUIC
%%%                                                           │ on this scheduler, delivers packets
%%%                                                           │ to the input handlers, re-arms the
%%%                                                           │ select; conn_run_tasks(Conn) runs
%%%                                                           │ the readers let go on
%%%                       a datagram came: poll ──────────────┤ (no select armed meanwhile)
%%%                                                           ▼
%%%  poller (low priority, bound to scheduler 1): endpoint_poll(Ep) in a loop, erlang:yield()
%%%    between calls, until no datagram came for `poll_us' (up to 10x that on a busy link);
%%%    then {Poller, idle} to the receiver, which arms the select again
%%%                                                           ▼
%%%                               input handlers, acceptor, connecting processes (messages)
%%% '''
%%%
%%% No thread of the NIF sits between the socket and the BEAM: the datagram is read, decrypted
%%% and delivered by the scheduler that runs the receiver or the poller. Each NIF call has a
%%% bounded amount of work, and a socket with more waiting answers the next select at once.
%%%
%%% Why a poller: a select wakes the runtime's poll thread for every datagram, and that thread
%%% must get a core before a scheduler hears of the datagram; on a machine with few cores the
%%% schedulers' own busy wait holds them, and the idle round trip moved between 54 and 176 µs
%%% from one run to the next (TCP distribution's socket is a port, polled by the schedulers
%%% themselves). While datagrams keep coming, the poller reads the socket in the time its
%%% scheduler would spend busy-waiting: at low priority it runs only when that scheduler has
%%% nothing else to do, and bound to scheduler 1 (where the runtime keeps a light load) it does
%%% not make the runtime wake a second scheduler to share what looks like load. When its
%%% scheduler is busy the poller gives up (its calls more than ?POLL_STARVED_US µs apart) and
%%% the select takes over; if it does not get to run for a millisecond, the receiver arms the
%%% select beside it.
-module(quic_dist_receiver).

-export([start/2, stop/0, run_tasks/1]).
%% For the unit tests.
-export([turn_window/3]).

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
%% The receiver arms the select beside a poller that has not reported for this long, ms.
-define(POLLER_SILENT_MS, 1).

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

%% Registers the name (one receiver per node), starts the poller and arms the first select.
init(Parent, Ref, Ep, PollUs) ->
    try register(?NAME, self()) of
        true ->
            Parent ! {Ref, {ok, self()}},
            Poller = start_poller(Ep, PollUs),
            receive_and_arm(Ep),
            armed(Ep, Poller)
    catch
        error:badarg ->
            Parent ! {Ref, {ok, whereis(?NAME)}}
    end.

%% The select is armed and the poller idle: waits for readiness of the socket.
armed(Ep, Poller) ->
    receive
        {select, _Watch, undefined, ready_input} when Poller =:= undefined ->
            receive_and_arm(Ep),
            armed(Ep, Poller);
        {select, _Watch, undefined, ready_input} ->
            poll(Ep),
            {Pid, Beat} = Poller,
            Pid ! poll,
            polled(Ep, Poller, atomics:get(Beat, 1));
        {run_tasks, Conn} ->
            ok = quic_dist_nif:conn_run_tasks(Conn),
            armed(Ep, Poller);
        stop ->
            stop(Ep, Poller)
    end.

%% The poller reads the socket, no select armed, until it says it is idle. Beats: the count
%% of its calls when last looked at.
polled(Ep, {Pid, Beat} = Poller, Beats) ->
    receive
        {Pid, idle} ->
            receive_and_arm(Ep),
            armed(Ep, Poller);
        {run_tasks, Conn} ->
            ok = quic_dist_nif:conn_run_tasks(Conn),
            polled(Ep, Poller, Beats);
        stop ->
            stop(Ep, Poller)
    after ?POLLER_SILENT_MS ->
            case atomics:get(Beat, 1) of
                Beats ->
                    %% The poller has not got to run: read here, and arm the select beside it.
                    receive_and_arm(Ep),
                    polled_and_armed(Ep, Poller);
                Now ->
                    polled(Ep, Poller, Now)
            end
    end.

%% Both read the socket until the poller says it is idle; the select stays armed then.
polled_and_armed(Ep, {Pid, _} = Poller) ->
    receive
        {select, _Watch, undefined, ready_input} ->
            receive_and_arm(Ep),
            polled_and_armed(Ep, Poller);
        {Pid, idle} ->
            armed(Ep, Poller);
        {run_tasks, Conn} ->
            ok = quic_dist_nif:conn_run_tasks(Conn),
            polled_and_armed(Ep, Poller);
        stop ->
            stop(Ep, Poller)
    end.

%% Stops the poller (gone when this returns) and the select messages.
stop(Ep, undefined) ->
    ok = quic_dist_nif:endpoint_unwatch(Ep);
stop(Ep, {Pid, _}) ->
    unlink(Pid),
    MRef = monitor(process, Pid),
    exit(Pid, kill),
    receive {'DOWN', MRef, process, Pid, _} -> ok end,
    stop(Ep, undefined).

%% Starts the poller, bound to scheduler 1 where the runtime allows it (`{scheduler, N}' is an
%% undocumented spawn option of OTP 25): its pid and the counter of its calls. None with a
%% window of 0.
start_poller(_Ep, 0) ->
    undefined;
start_poller(Ep, PollUs) ->
    Receiver = self(),
    Beat = atomics:new(1, []),
    Fun = fun() -> poller_idle(Ep, Receiver, Beat, PollUs, {PollUs, 0, 0}) end,
    Pid = try
              spawn_opt(Fun, [link, {priority, low}, {scheduler, 1}])
          catch
              error:badarg ->
                  spawn_opt(Fun, [link, {priority, low}])
          end,
    {Pid, Beat}.

%% The poller: waits for the receiver to hand it the socket. Last: its last turn's window,
%% the datagrams it read and when it ended.
poller_idle(Ep, Receiver, Beat, PollUs, Last) ->
    receive
        poll ->
            Now = erlang:monotonic_time(microsecond),
            Window = turn_window(PollUs, Last, Now),
            poller_spin(Ep, Receiver, Beat, {PollUs, Window}, Now + Window, Now, 0)
    end.

%% @private How long a poller's turn starting at `Now' (µs) reads on after each datagram, from
%% the last turn's window, the datagrams it read and when it ended (see ?BUSY_DATAGRAMS).
-spec turn_window(pos_integer(), {pos_integer(), non_neg_integer(), integer()}, integer()) ->
          pos_integer().
turn_window(PollUs, {Window, Read, Ended}, Now) ->
    Max = PollUs * ?BUSY_WINDOW_FACTOR,
    case Read >= ?BUSY_DATAGRAMS andalso Now - Ended < Max of
        true -> min(Max, Window * 2);
        false -> PollUs
    end.

%% Reads the socket until no datagram came for Window µs, or its scheduler turned out busy.
poller_spin(Ep, Receiver, Beat, {PollUs, Window} = W, Deadline, Last, Read) ->
    Now = erlang:monotonic_time(microsecond),
    atomics:add(Beat, 1, 1),
    N = case Now - Last > ?POLL_STARVED_US of
            true -> starved;
            false -> poll(Ep)
        end,
    case N of
        0 when Now =< Deadline ->
            erlang:yield(),
            poller_spin(Ep, Receiver, Beat, W, Deadline, Now, Read);
        N when is_integer(N), N > 0 ->
            %% After a read too: the processes its datagrams woke (input handlers, the
            %% receiver of a reply) go first. An endpoint_poll call costs the poller a
            %% reduction or so whatever it read, so on a busy link it used to keep its
            %% scheduler for a whole time slice (1-6 ms) while they waited.
            erlang:yield(),
            poller_spin(Ep, Receiver, Beat, W, Now + Window, Now, Read + N);
        _ ->
            Receiver ! {self(), idle},
            poller_idle(Ep, Receiver, Beat, PollUs, {Window, Read, Now})
    end.

%% Reads what waits without arming the select: the datagrams it read.
poll(Ep) ->
    case quic_dist_nif:endpoint_poll(Ep) of
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
