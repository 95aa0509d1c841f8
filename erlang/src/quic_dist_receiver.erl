%%% @doc The process that reads the node's UDP socket.
%%%
%%% ```
%%%  erts check_io ──{select, _, undefined, ready_input}──> receiver (high priority, one per node)
%%%  input handler ──{run_tasks, Conn}─────────────────────>   │ endpoint_receive(Ep): one NIF call
%%%    (its acknowledgement let a stream reader go on)        │ reads up to 8 datagrams, runs QUIC
%%%                                                           │ on this scheduler, delivers packets
%%%                                                           │ to the input handlers, re-arms the
%%%                                                           │ select; conn_run_tasks(Conn) runs
%%%                                                           │ the readers let go on
%%%                                                           ▼
%%%                               input handlers, acceptor, connecting processes (messages)
%%% '''
%%%
%%% No thread of the NIF sits between the socket and the BEAM: the datagram is read, decrypted
%%% and delivered by the scheduler that runs this process. The receiver never blocks: each call
%%% has a bounded amount of work, and a socket with more waiting answers the next select at once.
-module(quic_dist_receiver).

-export([start/1, stop/0, run_tasks/1]).

-include_lib("kernel/include/logger.hrl").

-define(NAME, quic_dist_receiver).

%% @doc Starts reading `Ep''s socket (once per node; a running receiver is kept).
-spec start(reference()) -> {ok, pid()}.
start(Ep) ->
    Parent = self(),
    Ref = make_ref(),
    Pid = spawn_opt(fun() -> init(Parent, Ref, Ep) end, [{priority, high}]),
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

%% Registers the name (one receiver per node) and arms the first select.
init(Parent, Ref, Ep) ->
    try register(?NAME, self()) of
        true ->
            Parent ! {Ref, {ok, self()}},
            receive_and_arm(Ep),
            loop(Ep)
    catch
        error:badarg ->
            Parent ! {Ref, {ok, whereis(?NAME)}}
    end.

%% Waits for readiness of the socket.
loop(Ep) ->
    receive
        {select, _Watch, undefined, ready_input} ->
            receive_and_arm(Ep),
            loop(Ep);
        {run_tasks, Conn} ->
            ok = quic_dist_nif:conn_run_tasks(Conn),
            loop(Ep);
        stop ->
            ok = quic_dist_nif:endpoint_unwatch(Ep)
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
