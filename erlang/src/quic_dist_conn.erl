%%% @doc The processes of one quic_dist connection, in the style of OTP's gen_tcp_dist.
%%%
%%% ```
%%%   dist_util supervisor ──link── controller ──link── input handler
%%%   (handshake, ticks)            (output)            (input)
%%% '''
%%%
%%% - The controller is what `f_getll' returns and what the runtime registers for the node.
%%%   During the handshake it runs at max priority and answers synchronous calls; afterwards
%%%   it drains `dist_ctrl_get_data/1' in batches (up to ?BATCH_PACKETS packets or
%%%   ?BATCH_BYTES bytes) and hands each batch to the NIF in one call. Backpressure, two levels:
%%%   * per sender: when a data stream's queue is over its mark, the NIF names the local
%%%     processes that just sent on it; the controller suspends them (asynchronously) and
%%%     resumes them on `{quic_dist_stream_writable, Stream}'. The runtime's queue, shared by
%%%     all senders to the node, keeps draining, so idle processes are not held up by busy ones.
%%%     Suspensions by a process end when it dies, so a dead controller frees them all.
%%%   * per connection (a safety net, and the only level with one stream): when all queues
%%%     together are over their mark the NIF says `busy' and the controller stops pulling until
%%%     `quic_dist_writable': the runtime's queue fills up and senders are suspended
%%%     (busy_dist_port).
%%% - The input handler receives the NIF's batches of packets, each from one stream. During the
%%%   handshake only the control stream is delivered: it queues them and serves `hs_recv'.
%%%   After `handshake_complete' it opens the data streams (`conn_open_input'), calls
%%%   `dist_ctrl_put_data/2' for each packet, in order, and acknowledges the bytes per stream so
%%%   the NIF reads more of that stream. It is the one process that feeds the runtime every
%%%   packet of the connection, so the reading of small packets that an acknowledgement lets go
%%%   on is left to the node's receiver process (`conn_ack' answers `run_tasks').
%%%   While its connection is the node's only one and datagrams come one at a time, it also
%%%   takes turns at reading the node's socket (quic_dist_receiver): bound to scheduler 1 and
%%%   at low priority during a turn, its own packets coming back to it as messages, so that the
%%%   process that reads a packet is the one that hands it to the runtime.
%%% - A receiving process that does not keep up: the input handler counts the bytes delivered to
%%%   each receiver since its mailbox was last seen empty. Above the `mailbox_limit' option it
%%%   stops acknowledging that stream's batches until the mailbox has halved: the stream stops
%%%   being read, QUIC flow control stops the peer's stream, and the peer suspends the senders
%%%   on it (see the controller). Other streams go on.
%%% - Streams: with the `streams' option above 1 (the default), the NIF spreads outgoing packets
%%%   over that many QUIC streams by sending process (the atom cache is rejected for this), so a
%%%   large message between two processes does not hold up the others. Ticks take the control
%%%   stream, which has priority.
%%% - Priority in data mode (quic_dist_urgency): the controller and the input handler run at
%%%   high priority while they move little data and the node has runnable processes, so that a
%%%   small message on a busy node waits for a scheduler once, as over TCP, not three times;
%%%   bulk data goes at normal priority.
%%% - The supervisor never blocks: ticks and stats are non-blocking NIF calls.
%%%
%%% Any of the three dying takes the others down through the links: that is nodedown.
%%% The NIF connection resource closes the QUIC connection when the last of them is gone.
-module(quic_dist_conn).

-export([start/1, set_supervisor/2, socket/1, info/1, is_controller/1]).
-export([hs_send/2, hs_recv/3, getll/1, handshake_complete/3, tick/1, getstat/1,
         remote_address/1]).

-include_lib("kernel/include/logger.hrl").

-define(BATCH_PACKETS, 256).
-define(BATCH_BYTES, (1024 * 1024)).
-define(SPAWN_OPTS, [{message_queue_data, off_heap}, {fullsweep_after, 0}]).
-define(SUPERVISOR_WAIT_MS, 120000).
-define(MAILBOX_RECHECK_MS, 20).

-type socket() :: {quic_dist, Ctrl :: pid(), Input :: pid(), Conn :: reference() | term()}.
-export_type([socket/0]).

%%% ------------------------------------------------------------------
%%% API used by quic_dist
%%% ------------------------------------------------------------------

%% @doc Starts the controller and input handler of a new QUIC connection.
-spec start(term()) -> {ok, pid()} | {error, term()}.
start(Conn) ->
    Starter = self(),
    Ctrl = spawn_opt(fun() -> controller_init(Starter, Conn) end,
                     [{priority, max} | ?SPAWN_OPTS]),
    Mon = monitor(process, Ctrl),
    receive
        {Ctrl, started, ok} ->
            demonitor(Mon, [flush]),
            {ok, Ctrl};
        {Ctrl, started, {error, _} = Error} ->
            demonitor(Mon, [flush]),
            Error;
        {'DOWN', Mon, process, Ctrl, Reason} ->
            {error, Reason}
    end.

%% @doc Links the controller to its dist_util supervisor.
-spec set_supervisor(pid(), pid()) -> ok.
set_supervisor(Ctrl, Sup) ->
    call(Ctrl, {set_supervisor, Sup}).

%% @doc The socket tuple that dist_util passes to the hs_data funs.
-spec socket(pid()) -> socket().
socket(Ctrl) ->
    call(Ctrl, socket).

%% @doc TLS, peer and transport details of the connection (see quic_dist:info/1).
-spec info(pid()) -> map().
info(Ctrl) ->
    call(Ctrl, info).

%% @doc True if Pid is a quic_dist controller.
-spec is_controller(pid()) -> boolean().
is_controller(Pid) when node(Pid) =:= node() ->
    case erlang:process_info(Pid, dictionary) of
        {dictionary, Dict} -> lists:member({quic_dist, controller}, Dict);
        undefined -> false
    end;
is_controller(_) ->
    false.

%%% ------------------------------------------------------------------
%%% hs_data funs (called by the dist_util supervisor)
%%% ------------------------------------------------------------------

%% @doc f_send: one handshake message as one frame.
-spec hs_send(socket(), iodata()) -> ok | {error, term()}.
hs_send({quic_dist, _Ctrl, _Input, Conn}, Data) ->
    case quic_dist_nif:conn_send(Conn, [Data]) of
        ok -> ok;
        busy -> ok;
        {OkOrBusy, _NoThrottleBeforeDataMode} when is_atom(OkOrBusy), OkOrBusy =/= error -> ok;
        {error, _} = Error -> Error
    end.

%% @doc f_recv (arity 3): the next handshake message, as a byte list.
-spec hs_recv(socket(), non_neg_integer(), timeout()) -> {ok, [byte()]} | {error, term()}.
hs_recv({quic_dist, _Ctrl, Input, _Conn}, _Length, Timeout) ->
    Mon = monitor(process, Input),
    Input ! {hs_recv, self(), Mon},
    receive
        {Mon, Reply} ->
            demonitor(Mon, [flush]),
            Reply;
        {'DOWN', Mon, process, Input, Reason} ->
            {error, {closed, Reason}}
    after Timeout ->
            demonitor(Mon, [flush]),
            {error, timeout}
    end.

%% @doc f_getll: the controller is the distribution "port".
-spec getll(socket()) -> {ok, pid()}.
getll({quic_dist, Ctrl, _Input, _Conn}) ->
    {ok, Ctrl}.

%% @doc f_handshake_complete: switch the controller and input handler to data mode.
-spec handshake_complete(socket(), node(), term()) -> ok.
handshake_complete({quic_dist, Ctrl, _Input, _Conn}, Node, DHandle) ->
    call(Ctrl, {handshake_complete, Node, DHandle}).

%% @doc mf_tick: queue a tick; never blocks.
-spec tick(socket()) -> ok.
tick({quic_dist, _Ctrl, _Input, Conn}) ->
    quic_dist_nif:conn_tick(Conn).

%% @doc mf_getstat: received counts UDP datagrams, so any QUIC activity is liveness.
-spec getstat(socket()) -> {ok, non_neg_integer(), non_neg_integer(), non_neg_integer()}.
getstat({quic_dist, _Ctrl, _Input, Conn}) ->
    quic_dist_nif:conn_getstat(Conn).

%% @doc The peer's {Ip, Port}.
-spec remote_address(socket()) -> {inet:ip_address(), inet:port_number()}.
remote_address({quic_dist, _Ctrl, _Input, Conn}) ->
    maps:get(remote, quic_dist_nif:conn_info(Conn)).

%%% ------------------------------------------------------------------
%%% Controller
%%% ------------------------------------------------------------------

-record(input, {dhandle, conn, node,
                limit :: non_neg_integer(),
                pending = #{} :: #{pid() => non_neg_integer()},
                held = #{} :: #{pid() => {[{non_neg_integer(), non_neg_integer()}],
                                          non_neg_integer()}},
                timer :: reference() | undefined,
                urgency :: quic_dist_urgency:urgency() | undefined,
                turn :: quic_dist_receiver:turn() | undefined}).
-record(ctrl, {conn, input, dhandle, node,
               suspended = #{} :: #{non_neg_integer() => [pid()]},
               urgency :: quic_dist_urgency:urgency() | undefined}).

%% Spawns the input handler, starts the NIF connection, then serves the handshake.
controller_init(Starter, Conn) ->
    put(quic_dist, controller),
    Self = self(),
    _ = spawn(fun() -> close_when_down(Self, Conn) end),
    Input = spawn_opt(fun() -> input_init(Self, Conn) end, [link | ?SPAWN_OPTS]),
    case quic_dist_nif:conn_start(Conn, Input, Self) of
        ok ->
            Starter ! {Self, started, ok},
            StarterMon = monitor(process, Starter),
            handshake_loop(#ctrl{conn = Conn, input = Input}, StarterMon);
        {error, _} = Error ->
            Starter ! {Self, started, Error},
            exit(normal)
    end.

%% Ends the QUIC connection when the controller is gone (nodedown on this side:
%% disconnect_node/1, tick timeout, a crash; or a failed handshake). Waiting for the connection
%% resource to be dropped is not enough: a stale reference can stay for long in the heap of a
%% live process (the acceptor's, until its next garbage collection), and the peer would then only
%% notice at its own tick timeout. The shutdown is graceful, like a TCP close: what was queued
%% still reaches the peer (above all the `nok' status that settles simultaneous connects, after
%% which the peer waits to be killed by its net_kernel), then the connection closes.
close_when_down(Ctrl, Conn) ->
    Mon = monitor(process, Ctrl),
    receive
        {'DOWN', Mon, process, Ctrl, Reason} ->
            quic_dist_nif:conn_shutdown(Conn, close_reason(Reason))
    end.

%% What the peer is told. A wrong cookie, found by dist_util on the accepting side (which logs
%% it), is a refusal that the peer logs as a warning: over TCP the refused node learns nothing.
close_reason({recv_challenge_reply_failed, bad_cookie}) ->
    quic_dist_identity:refusal("the challenge reply was made with another cookie (the two "
                               "nodes' cookies differ)");
close_reason(Reason) ->
    Why = case Reason of
              A when is_atom(A) -> atom_to_binary(A);
              T when is_tuple(T), is_atom(element(1, T)) -> atom_to_binary(element(1, T));
              _ -> <<"error">>
          end,
    <<"distribution connection down: ", Why/binary>>.

%% Handshake phase: until the supervisor is known, the starter's death ends us.
handshake_loop(S, StarterMon) ->
    Timeout = case StarterMon of
                  undefined -> infinity;
                  _ -> ?SUPERVISOR_WAIT_MS
              end,
    receive
        {From, Ref, {set_supervisor, Sup}} ->
            try link(Sup)
            catch
                %% net_kernel ended the handshake before it began (a simultaneous connect
                %% settled meanwhile): the connection has no use.
                error:noproc -> exit({shutdown, supervisor_gone})
            end,
            demonitor(StarterMon, [flush]),
            From ! {Ref, ok},
            handshake_loop(S, undefined);
        {From, Ref, {handshake_complete, Node, DHandle}} ->
            From ! {Ref, ok},
            start_data_mode(S#ctrl{dhandle = DHandle, node = Node});
        {From, Ref, Request} ->
            From ! {Ref, handle_request(Request, S)},
            handshake_loop(S, StarterMon);
        {'DOWN', StarterMon, process, _, Reason} ->
            exit({starter_down, Reason})
    after Timeout ->
            exit(no_supervisor)
    end.

%% Registers the input handler, hands it the DHandle, and starts pulling data.
start_data_mode(#ctrl{dhandle = DH, input = Input, node = Node} = S) ->
    ok = erlang:dist_ctrl_input_handler(DH, Input),
    Input ! {handshake_complete, Node, DH},
    false = erlang:dist_ctrl_set_opt(DH, get_size, true),
    ok = quic_dist_nif:conn_data_mode(S#ctrl.conn, quic_dist:data_streams()),
    process_flag(priority, normal),
    output_drain(S#ctrl{urgency = quic_dist_urgency:new()}).

%% Waits for data to send or a request.
output_loop(#ctrl{urgency = U} = S0) ->
    S = S0#ctrl{urgency = quic_dist_urgency:handled(0, U)},
    receive
        dist_data -> output_drain(S);
        quic_dist_writable -> output_drain(S);
        {quic_dist_stream_writable, Stream} -> output_loop(resume_stream(Stream, S));
        {From, Ref, Request} ->
            From ! {Ref, handle_request(Request, S)},
            output_loop(S)
    end.

%% Sends everything the runtime has queued, one NIF call per batch.
output_drain(#ctrl{dhandle = DH, conn = Conn} = S0) ->
    case collect(DH, [], 0, 0) of
        {[], _Bytes, _More} ->
            ok = erlang:dist_ctrl_get_data_notification(DH),
            output_loop(S0);
        {Batch, Bytes, More} ->
            S = S0#ctrl{urgency = quic_dist_urgency:handled(Bytes, S0#ctrl.urgency)},
            case quic_dist_nif:conn_send(Conn, lists:reverse(Batch)) of
                ok when More -> output_drain(S);
                ok ->
                    ok = erlang:dist_ctrl_get_data_notification(DH),
                    output_loop(S);
                busy -> output_busy(S);
                {ok, Throttle} when More -> output_drain(suspend_senders(Throttle, S));
                {ok, Throttle} ->
                    ok = erlang:dist_ctrl_get_data_notification(DH),
                    output_loop(suspend_senders(Throttle, S));
                {busy, Throttle} -> output_busy(suspend_senders(Throttle, S));
                {error, Reason} -> exit({send_failed, Reason})
            end
    end.

%% Suspends local processes whose stream is over its mark, once each, until it drains.
suspend_senders(Throttle, #ctrl{suspended = Suspended} = S) ->
    S#ctrl{suspended = lists:foldl(fun suspend_sender/2, Suspended, Throttle)}.

suspend_sender({Stream, EncodedPid}, Suspended) ->
    try binary_to_term(<<131, EncodedPid/binary>>) of
        Pid when node(Pid) =:= node(), Pid =/= self() ->
            %% Not processes that run at high priority (system ones): they are never the
            %% bulk senders, and holding them could hold up the node.
            case erlang:process_info(Pid, priority) of
                {priority, P} when P =:= normal; P =:= low ->
                    case erlang:suspend_process(Pid, [asynchronous, unless_suspending]) of
                        true -> maps:update_with(Stream, fun(Ps) -> [Pid | Ps] end, [Pid],
                                                 Suspended);
                        false -> Suspended
                    end;
                _ -> Suspended
            end;
        _ -> Suspended
    catch
        error:badarg -> Suspended  % gone meanwhile, or not a pid
    end.

%% Resumes the processes suspended for Stream.
resume_stream(Stream, #ctrl{suspended = Suspended} = S) ->
    {Pids, Rest} = case maps:take(Stream, Suspended) of
                       {Ps, R} -> {Ps, R};
                       error -> {[], Suspended}
                   end,
    lists:foreach(fun(Pid) -> catch erlang:resume_process(Pid) end, Pids),
    S#ctrl{suspended = Rest}.

%% Pulls packets until the queue is empty (More = false) or the batch is full.
collect(_DH, Acc, Packets, Bytes) when Packets >= ?BATCH_PACKETS; Bytes >= ?BATCH_BYTES ->
    {Acc, Bytes, true};
collect(DH, Acc, Packets, Bytes) ->
    case erlang:dist_ctrl_get_data(DH) of
        none -> {Acc, Bytes, false};
        {Size, Data} -> collect(DH, [Data | Acc], Packets + 1, Bytes + Size)
    end.

%% The NIF's queue is full: pull nothing until it drains.
output_busy(S) ->
    receive
        quic_dist_writable -> output_drain(S);
        {quic_dist_stream_writable, Stream} -> output_busy(resume_stream(Stream, S));
        {From, Ref, Request} ->
            From ! {Ref, handle_request(Request, S)},
            output_busy(S)
    end.

handle_request(socket, #ctrl{conn = Conn, input = Input}) ->
    {quic_dist, self(), Input, Conn};
handle_request(info, #ctrl{conn = Conn}) ->
    connection_info(Conn);
handle_request(Other, _S) ->
    {error, {unknown_request, Other}}.

%% The connection as quic_dist:info/1 shows it.
connection_info(Conn) ->
    Info = quic_dist_nif:conn_info(Conn),
    Stats = quic_dist_nif:conn_stats(Conn),
    Certs = maps:get(peer_certificates, Info),
    Peer = case Certs of
               [Leaf | _] -> quic_dist_cert_info:summary(Leaf);
               [] -> undefined
           end,
    maps:merge(maps:without([peer_certificates], Info),
               #{peer_certificate => Peer, stats => Stats,
                 rtt_us => maps:get(rtt_us, Stats), streams => maps:get(streams, Stats)}).

%%% ------------------------------------------------------------------
%%% Input handler
%%% ------------------------------------------------------------------

%% Handshake phase: queue packets, serve hs_recv, wait for the DHandle.
input_init(Ctrl, Conn) ->
    input_handshake(Ctrl, Conn, queue:new(), undefined).

input_handshake(Ctrl, Conn, Queue, Waiting) ->
    receive
        {quic_dist_data, Packets, Channel, Bytes, _Receivers} ->
            ack(Conn, Channel, Bytes),
            Queue1 = lists:foldl(fun queue:in/2, Queue, Packets),
            {Queue2, Waiting1} = serve_recv(Queue1, Waiting),
            input_handshake(Ctrl, Conn, Queue2, Waiting1);
        {hs_recv, From, Ref} ->
            {Queue1, Waiting1} = serve_recv(Queue, {From, Ref}),
            input_handshake(Ctrl, Conn, Queue1, Waiting1);
        {handshake_complete, Node, DH} ->
            put_queue(DH, Queue),
            ok = quic_dist_nif:conn_open_input(Conn),
            ok = quic_dist_receiver:input_ready(self()),
            input_loop(#input{dhandle = DH, conn = Conn, node = Node,
                              limit = quic_dist:mailbox_limit(),
                              urgency = quic_dist_urgency:new()});
        {quic_dist_closed, Reason} ->
            %% Log before answering: the answer makes the handshake fail, and its process
            %% takes this one down through the links, possibly before a later log call.
            log_handshake_close(Conn, Reason),
            input_handshake_closed(Queue, Waiting, Reason)
    end.

%% A peer's refusal of this node's identity is a warning, with the peer's reason; other closes
%% during the handshake (a simultaneous connect settled, a peer going away) are routine.
log_handshake_close(Conn, Reason) ->
    case quic_dist_identity:peer_refusal(Reason) of
        {refused, Text} ->
            ?LOG_WARNING("quic_dist handshake with ~s failed: ~ts",
                         [peer_text(Conn), Text], #{});
        other ->
            ?LOG_INFO("quic_dist connection closed during handshake: ~ts", [Reason], #{})
    end.

peer_text(Conn) ->
    case catch quic_dist_nif:conn_info(Conn) of
        #{remote := {Ip, Port}} -> io_lib:format("~s:~b", [inet:ntoa(Ip), Port]);
        _ -> "the peer"
    end.

%% The peer closed during the handshake. What it sent before (such as the `nok' status that
%% settles a simultaneous connect) is still handed out, then hs_recv fails. We exit `normal':
%% the handshake learns of the close from its hs_recv (or f_send), and the link must not kill
%% it: after a `nok' status it waits to be killed by net_kernel, which then hands the node to
%% the simultaneous connection.
input_handshake_closed(Queue, Waiting, Reason) ->
    case serve_recv(Queue, Waiting) of
        {_Empty, {From, Ref}} ->
            %% Waiting with nothing left to hand out.
            From ! {Ref, {error, {closed, Reason}}},
            exit(normal);
        {Queue1, undefined} ->
            receive
                {hs_recv, From, Ref} ->
                    input_handshake_closed(Queue1, {From, Ref}, Reason);
                {handshake_complete, _Node, DH} ->
                    put_queue(DH, Queue1),
                    exit({connection_closed, Reason})
            end
    end.

serve_recv(Queue, undefined) ->
    {Queue, undefined};
serve_recv(Queue, {From, Ref} = Waiting) ->
    case queue:out(Queue) of
        {{value, Packet}, Rest} ->
            From ! {Ref, {ok, binary_to_list(Packet)}},
            {Rest, undefined};
        {empty, _} ->
            {Queue, Waiting}
    end.

put_queue(DH, Queue) ->
    put_packets(DH, queue:to_list(Queue)).

%% Data phase: every packet to the runtime, in order, then acknowledge the bytes (unless a
%% receiver is too far behind: see mailbox_check/4).
input_loop(#input{turn = undefined, urgency = U} = S) ->
    receive
        Message -> input_message(Message, S)
    after 0 ->
            S1 = S#input{urgency = quic_dist_urgency:handled(0, U)},
            receive
                Message -> input_message(Message, S1)
            end
    end;
input_loop(#input{turn = Turn} = S) ->
    %% Holding a turn at reading the socket: what a read brings for this connection comes
    %% back as a message to this process, handled at the next pass, after any sent before.
    receive
        Message -> input_message(Message, S)
    after 0 ->
            case quic_dist_receiver:turn_step(Turn) of
                {continue, Turn1} -> input_loop(S#input{turn = Turn1});
                done -> input_loop(turn_over(S))
            end
    end.

%% The end of a turn: back to any scheduler, at normal priority.
turn_over(S) ->
    bind_to_scheduler(0),
    _ = process_flag(priority, normal),
    S#input{turn = undefined}.

%% Binds the calling process to scheduler N (0: unbinds it) where the runtime allows it:
%% `process_flag(scheduler, N)' is undocumented in OTP 25, as the poller's spawn option is.
bind_to_scheduler(N) ->
    try process_flag(scheduler, N) of
        _ -> ok
    catch
        error:badarg -> ok
    end.

%% One message of the data phase.
input_message({quic_dist_data, Packets, Channel, Bytes, Receivers},
              #input{dhandle = DH, urgency = U} = S) ->
    put_packets(DH, Packets),
    S1 = S#input{urgency = quic_dist_urgency:handled(Bytes, U)},
    S2 = mailbox_check(Receivers, Channel, Bytes, S1),
    %% Holding a turn: the processes these packets woke run before the next read.
    _ = S2#input.turn =:= undefined orelse erlang:yield(),
    input_loop(S2);
input_message({quic_dist_turn, Turn}, #input{urgency = U} = S) ->
    %% A turn at reading the socket (quic_dist_receiver): on the poller's scheduler and at its
    %% low priority, so that the processes the packets wake go first. Urgency counts the
    %% process as normal, and turn_over/1 sets it so.
    bind_to_scheduler(1),
    _ = process_flag(priority, low),
    input_loop(S#input{turn = quic_dist_receiver:turn_begin(Turn),
                       urgency = quic_dist_urgency:normal(U)});
input_message(quic_dist_turn_release, #input{turn = undefined} = S) ->
    input_loop(S);
input_message(quic_dist_turn_release, #input{turn = Turn} = S) ->
    done = quic_dist_receiver:turn_release(Turn),
    input_loop(turn_over(S));
input_message(mailbox_recheck, S) ->
    input_loop(mailbox_recheck(S#input{timer = undefined}));
input_message({quic_dist_closed, Reason}, #input{node = Node}) ->
    ?LOG_INFO("quic_dist connection to ~p closed: ~ts", [Node, Reason], #{}),
    exit({connection_closed, Reason}).

%% Counts what each receiver got; acknowledges the batch unless one of them is over the limit,
%% in which case the acknowledgement waits for its mailbox (mailbox_recheck/1).
mailbox_check(_Receivers, Channel, Bytes, #input{limit = 0, conn = Conn} = S) ->
    ack(Conn, Channel, Bytes),
    S;
mailbox_check(Receivers, Channel, Bytes, #input{conn = Conn, pending = Pending0} = S) ->
    Local = [{Pid, N} || {To, N} <- Receivers, Pid <- [local_process(To)], Pid =/= undefined],
    Pending = lists:foldl(fun({Pid, N}, Acc) ->
                                  maps:update_with(Pid, fun(M) -> M + N end, N, Acc)
                          end, trim_pending(Pending0, S#input.limit), Local),
    S1 = S#input{pending = Pending},
    case over_limit([Pid || {Pid, _} <- Local], S1) of
        {none, S2} ->
            ack(Conn, Channel, Bytes),
            S2;
        {Pid, Len, S2} ->
            hold(Pid, Len, Channel, Bytes, S2)
    end.

%% The first receiver over the limit whose mailbox is not empty; resets those found empty.
over_limit([], S) ->
    {none, S};
over_limit([Pid | Rest], #input{pending = Pending, limit = Limit} = S) ->
    case maps:get(Pid, Pending, 0) > Limit div 4 of
        false -> over_limit(Rest, S);
        true ->
            case queue_len(Pid) of
                0 -> over_limit(Rest, S#input{pending = maps:remove(Pid, Pending)});
                Len when map_get(Pid, Pending) > Limit -> {Pid, Len, S};
                _ -> over_limit(Rest, S)
            end
    end.

hold(Pid, Len, Channel, Bytes, #input{held = Held} = S) ->
    Entry = case maps:find(Pid, Held) of
                {ok, {Acks, Len0}} -> {[{Channel, Bytes} | Acks], Len0};
                error ->
                    ?LOG_DEBUG("quic_dist: ~p is ~b messages behind; pausing its stream",
                               [Pid, Len], #{}),
                    {[{Channel, Bytes}], Len}
            end,
    arm(S#input{held = Held#{Pid => Entry}}).

%% Releases the acknowledgements held for receivers that are gone or have halved their mailbox.
mailbox_recheck(#input{held = Held, pending = Pending, conn = Conn} = S) ->
    {Keep, Pending1} =
        maps:fold(fun(Pid, {Acks, Len0} = Entry, {K, P}) ->
                          case queue_len(Pid) of
                              Len when Len > Len0 div 2 -> {K#{Pid => Entry}, P};
                              Len ->
                                  [ack(Conn, C, B)
                                   || {C, B} <- lists:reverse(Acks)],
                                  Left = maps:get(Pid, P, 0) * Len div max(Len0, 1),
                                  {K, P#{Pid => Left}}
                          end
                  end, {#{}, Pending}, Held),
    arm(S#input{held = Keep, pending = Pending1}).

arm(#input{held = Held, timer = undefined} = S) when map_size(Held) > 0 ->
    S#input{timer = erlang:send_after(?MAILBOX_RECHECK_MS, self(), mailbox_recheck)};
arm(S) ->
    S.

%% Forgets receivers far below the limit when there are many (short-lived processes).
trim_pending(Pending, Limit) when map_size(Pending) > 4096 ->
    maps:filter(fun(_, N) -> N > Limit div 4 end, Pending);
trim_pending(Pending, _Limit) ->
    Pending.

queue_len(Pid) ->
    case erlang:process_info(Pid, message_queue_len) of
        {message_queue_len, Len} -> Len;
        undefined -> 0
    end.

%% The local process an encoded receiver (pid or registered name) is, if any.
local_process(Encoded) ->
    try binary_to_term(<<131, Encoded/binary>>) of
        Pid when is_pid(Pid), node(Pid) =:= node() -> Pid;
        Name when is_atom(Name) ->
            case whereis(Name) of
                Pid when is_pid(Pid) -> Pid;
                _ -> undefined
            end;
        _ -> undefined
    catch
        error:badarg -> undefined
    end.

%% Tells the NIF the runtime has consumed a batch. A reader that this lets go on reads in the
%% node's receiver process, not here: this process feeds the runtime every packet of the
%% connection and is the first to run out of time under load.
ack(Conn, Channel, Bytes) ->
    case quic_dist_nif:conn_ack(Conn, Channel, Bytes) of
        ok -> ok;
        run_tasks -> quic_dist_receiver:run_tasks(Conn)
    end.

%% Hands packets to the runtime, in order. The runtime refuses them once the connection is
%% gone (taken down, or its node already connected again): the packets have nowhere to go and
%% we end, as the controller's exit signal would have ended us a moment later.
put_packets(DH, Packets) ->
    try
        put_each(DH, Packets)
    catch
        error:Why when Why =:= badarg; Why =:= notsup ->
            ?LOG_DEBUG("quic_dist: packets for a connection that is gone dropped (~p)", [Why],
                       #{}),
            exit({shutdown, connection_gone})
    end.

put_each(DH, [P | Ps]) ->
    erlang:dist_ctrl_put_data(DH, P),
    put_each(DH, Ps);
put_each(_DH, []) ->
    ok.

%%% ------------------------------------------------------------------
%%% Helpers
%%% ------------------------------------------------------------------

%% A synchronous call to the controller, failing if it dies.
call(Ctrl, Request) ->
    Mon = monitor(process, Ctrl),
    Ctrl ! {self(), Mon, Request},
    receive
        {Mon, Reply} ->
            demonitor(Mon, [flush]),
            Reply;
        {'DOWN', Mon, process, Ctrl, Reason} ->
            exit({quic_dist_controller_down, Reason})
    end.
