%%% @doc Benchmark code that runs on the measured nodes themselves.
%%%
%%% The controller (bench_ctl, not distributed) calls these functions on node A through
%%% `peer:call/5' (standard I/O). Everything timed happens between node A and node B over the
%%% carrier under test: A spawns the remote half on B with `spawn/4', and the clock is read on A
%%% (erlang:monotonic_time/1). Every loop is bounded in count, and the open-ended ones in time too.
-module(bench_node).

-export([os_pid/0, connect/1, reconnect/3, rtt/4, rtt_bursts/4, rtt_busy/4, small/4, bulk/3,
         hol/6, quic_info/1]).
%% Spawned on node B by rtt_busy/4.
-export([busy/1]).
%% Remote halves, spawned on node B.
-export([echo/0, counter/1, sink/1]).

-define(CALL_TIMEOUT, 60000).
-define(REMOTE_SPAWN_OPTS, [{message_queue_data, off_heap}]).

%%% ------------------------------------------------------------------
%%% Node
%%% ------------------------------------------------------------------

-spec os_pid() -> string().
os_pid() -> os:getpid().

%% @doc quic_dist:info(Node) if quic_dist is the carrier, else undefined.
quic_info(Node) ->
    case code:is_loaded(quic_dist) of
        false -> undefined;
        _ ->
            try quic_dist:info(Node) of
                {ok, Info} -> maps:with([rtt_us, streams, stats, cipher_suite, tls_version,
                                         mode], Info);
                Other -> Other
            catch C:R -> {C, R}
            end
    end.

%%% ------------------------------------------------------------------
%%% Connection set-up
%%% ------------------------------------------------------------------

%% @doc Fresh node to pong: microseconds for the first net_adm:ping/1 of this node to Node.
-spec connect(node()) -> {ok, number()} | {error, term()}.
connect(Node) ->
    T0 = now_ns(),
    case net_adm:ping(Node) of
        pong -> {ok, (now_ns() - T0) / 1000};
        pang -> {error, pang}
    end.

%% @doc Disconnect, let both sides settle, then time ping until pong. Warm + N rounds;
%% returns the N times in microseconds and the number of failures.
-spec reconnect(node(), non_neg_integer(), pos_integer()) -> {[number()], non_neg_integer()}.
reconnect(Node, Warm, N) ->
    pong = net_adm:ping(Node),
    Results = [reconnect_once(Node) || _ <- lists:seq(1, Warm + N)],
    Measured = lists:nthtail(Warm, Results),
    {[T || {ok, T} <- Measured], length([E || {error, _} = E <- Measured])}.

reconnect_once(Node) ->
    true = erlang:disconnect_node(Node),
    wait_gone(Node, 200),
    %% The other side learns about the disconnect asynchronously; give it time to finish
    %% (a ping that races with its nodedown would measure the race, not the reconnect).
    timer:sleep(150),
    T0 = now_ns(),
    case net_adm:ping(Node) of
        pong -> {ok, (now_ns() - T0) / 1000};
        pang -> timer:sleep(500), {error, pang}
    end.

wait_gone(_Node, 0) -> ok;
wait_gone(Node, N) ->
    case lists:member(Node, nodes([visible, hidden])) of
        true -> timer:sleep(5), wait_gone(Node, N - 1);
        false -> ok
    end.

%%% ------------------------------------------------------------------
%%% Ping-pong round trip
%%% ------------------------------------------------------------------

%% @doc Warm + N sequential round trips of a small message to an echo process on Node.
%% Returns the N round-trip times in nanoseconds, in the order taken. Stops early (fewer
%% samples) if MaxMs elapse.
-spec rtt(node(), non_neg_integer(), pos_integer(), pos_integer()) -> [integer()].
rtt(Node, Warm, N, MaxMs) ->
    Echo = spawn(Node, ?MODULE, echo, []),
    _ = ping_loop(Echo, Warm, now_ns() + MaxMs * 1000000, []),
    Samples = ping_loop(Echo, N, now_ns() + MaxMs * 1000000, []),
    Echo ! stop,
    Samples.

ping_loop(_Echo, 0, _Deadline, Acc) ->
    lists:reverse(Acc);
ping_loop(Echo, N, Deadline, Acc) ->
    T0 = now_ns(),
    Echo ! {self(), N},
    receive {Echo, N} -> ok end,
    T1 = now_ns(),
    case T1 > Deadline of
        true -> lists:reverse([T1 - T0 | Acc]);
        false -> ping_loop(Echo, N - 1, Deadline, [T1 - T0 | Acc])
    end.

%% @doc Bursts of Len round trips, each burst after IdleMs of silence on the connection, to
%% an echo process on Node: {FirstOfEachBurst, TheOthers}, in nanoseconds. Distribution
%% traffic is often like this (a request now and then, a short exchange), and a carrier can
%% be slower for it than in a sustained ping-pong: what wakes the receiver after a silence,
%% what keeps it polling during one.
-spec rtt_bursts(node(), pos_integer(), pos_integer(), non_neg_integer()) ->
          {[integer()], [integer()]}.
rtt_bursts(Node, Bursts, Len, IdleMs) ->
    Echo = spawn(Node, ?MODULE, echo, []),
    _ = ping_loop(Echo, 10, now_ns() + 5000000000, []),
    Runs = [begin
                timer:sleep(IdleMs),
                ping_loop(Echo, Len, now_ns() + 5000000000, [])
            end || _ <- lists:seq(1, Bursts)],
    Echo ! stop,
    {[hd(R) || R <- Runs, R =/= []], lists:append([tl(R) || R <- Runs, R =/= []])}.

%% @doc Round trips to an echo process on Node while Spinners processes there keep its
%% schedulers busy, as an application's own work does (all at normal priority, as the echo
%% process and an application's processes are): N samples, in nanoseconds. What a message
%% waits for besides its receiver's turn is the carrier's: TCP distribution's port I/O runs
%% between processes; a carrier's own processes wait in the run queue like any other.
-spec rtt_busy(node(), pos_integer(), pos_integer(), pos_integer()) -> [integer()].
rtt_busy(Node, N, Spinners, MaxMs) ->
    Busy = spawn(Node, ?MODULE, busy, [Spinners]),
    try
        rtt(Node, 20, N, MaxMs)
    after
        exit(Busy, kill)
    end.

%% @doc Spinners processes that keep this node's schedulers busy until this one is killed.
busy(Spinners) ->
    _ = [spawn_link(fun spin/0) || _ <- lists:seq(1, Spinners)],
    receive after infinity -> ok end.

spin() ->
    _ = lists:seq(1, 100),
    spin().

echo() ->
    receive
        {From, Msg} -> From ! {self(), Msg}, echo();
        stop -> ok
    end.

%%% ------------------------------------------------------------------
%%% One-way throughput of small messages
%%% ------------------------------------------------------------------

%% @doc Senders processes on this node each send Total div Senders binaries of Payload bytes
%% to their own counter on Node, then a `done' marker; the counter answers with what it
%% received. Returns {Seconds, MessagesCounted}: the time from `go' to the last counter's answer.
-spec small(node(), pos_integer(), pos_integer(), pos_integer()) -> {float(), integer()}.
small(Node, Senders, Total, Payload) ->
    Bin = payload(Payload),
    Per = Total div Senders,
    run_pairs(Node, Senders, fun(Counter) -> send_n(Counter, Bin, Per) end).

%% @doc One sender, Total bytes as binaries of Size bytes. Returns {Seconds, BytesCounted}.
-spec bulk(node(), pos_integer(), pos_integer()) -> {float(), integer()}.
bulk(Node, Size, Total) ->
    Bin = payload(Size),
    Count = max(1, Total div Size),
    run_pairs(Node, 1, fun(Counter) -> send_n(Counter, Bin, Count) end, bytes).

run_pairs(Node, Pairs, SendFun) ->
    run_pairs(Node, Pairs, SendFun, messages).

run_pairs(Node, Pairs, SendFun, What) ->
    Self = self(),
    Counters = [spawn_opt(Node, ?MODULE, counter, [What], ?REMOTE_SPAWN_OPTS)
                || _ <- lists:seq(1, Pairs)],
    %% Make sure every counter exists before the clock starts.
    [begin C ! {ready, Self}, receive {C, ready} -> ok end end || C <- Counters],
    Senders = [spawn_link(fun() ->
                                  receive go -> ok end,
                                  SendFun(C),
                                  C ! {done, Self}
                          end) || C <- Counters],
    T0 = now_ns(),
    [S ! go || S <- Senders],
    Counted = [receive {C, counted, K} -> K after 600000 -> error(counter_timeout) end
               || C <- Counters],
    T1 = now_ns(),
    {(T1 - T0) / 1.0e9, lists:sum(Counted)}.

send_n(_To, _Msg, 0) -> ok;
send_n(To, Msg, N) ->
    To ! Msg,
    send_n(To, Msg, N - 1).

counter(What) ->
    receive {ready, From} -> From ! {self(), ready} end,
    case What of
        messages -> count_messages(0);
        bytes -> count_bytes(0)
    end.

count_messages(N) ->
    receive
        B when is_binary(B) -> count_messages(N + 1);
        {done, From} -> From ! {self(), counted, N}
    end.

count_bytes(N) ->
    receive
        B when is_binary(B) -> count_bytes(N + byte_size(B));
        {done, From} -> From ! {self(), counted, N}
    end.

%%% ------------------------------------------------------------------
%%% Head-of-line: ping-pong while another pair streams large messages
%%% ------------------------------------------------------------------

%% @doc A streamer on this node sends StreamSize binaries to a sink on Node, keeping at most
%% Window of them unacknowledged (so that a carrier without backpressure cannot queue
%% gigabytes), at most MaxStream in all. Once the sink has the first one (the stream is
%% flowing: that is the warm-up), Pings round trips are timed between two other processes.
%% After MaxMs the streamer stops sending and the pinger stops after its current round trip.
%% Returns {RoundTripNs, StreamedBytes, StreamSeconds}.
-spec hol(node(), pos_integer(), pos_integer(), pos_integer(), pos_integer(),
          pos_integer()) -> {[integer()], integer(), float()}.
hol(Node, Pings, StreamSize, Window, MaxStream, MaxMs) ->
    Self = self(),
    Bin = payload(StreamSize),
    Sink = spawn_opt(Node, ?MODULE, sink, [Self], ?REMOTE_SPAWN_OPTS),
    Echo = spawn(Node, ?MODULE, echo, []),
    Sink ! {ready, Self},
    receive {Sink, ready} -> ok end,
    T0 = now_ns(),
    Deadline = T0 + MaxMs * 1000000,
    Streamer = spawn_link(fun() -> stream(Sink, Bin, MaxStream, Window, Deadline) end),
    receive {Sink, first} -> ok after 60000 -> error(stream_not_started) end,
    Samples = ping_loop(Echo, Pings, Deadline, []),
    Streamer ! stop,
    {Bytes, T1} = receive {Sink, counted, K} -> {K, now_ns()}
                  after 600000 -> error(sink_timeout)
                  end,
    Echo ! stop,
    {Samples, Bytes, (T1 - T0) / 1.0e9}.

stream(Sink, Bin, N, Credit, Deadline) ->
    case N > 0 andalso Credit > 0 andalso now_ns() < Deadline of
        true ->
            receive
                stop -> Sink ! {done, self()};
                {Sink, got} -> stream(Sink, Bin, N, Credit + 1, Deadline)
            after 0 ->
                    Sink ! {self(), Bin},
                    stream(Sink, Bin, N - 1, Credit - 1, Deadline)
            end;
        false ->
            receive
                stop -> Sink ! {done, self()};
                {Sink, got} -> stream(Sink, Bin, N, Credit + 1, Deadline)
            end
    end.

sink(Coordinator) ->
    receive {ready, From} -> From ! {self(), ready} end,
    receive
        {Streamer, B} when is_binary(B) ->
            Streamer ! {self(), got},
            Coordinator ! {self(), first},
            sink_loop(Coordinator, byte_size(B))
    end.

sink_loop(Coordinator, N) ->
    receive
        {Streamer, B} when is_binary(B) ->
            Streamer ! {self(), got},
            sink_loop(Coordinator, N + byte_size(B));
        {done, _Streamer} -> Coordinator ! {self(), counted, N}
    end.

%%% ------------------------------------------------------------------
%%% Helpers
%%% ------------------------------------------------------------------

now_ns() -> erlang:monotonic_time(nanosecond).

%% A binary of Size bytes that does not compress to nothing (no carrier compresses, but a
%% constant pattern should not matter either way).
payload(Size) ->
    Chunk = crypto_free_bytes(256),
    Full = binary:copy(Chunk, Size div 256),
    <<Full/binary, (binary:part(Chunk, 0, Size rem 256))/binary>>.

crypto_free_bytes(N) ->
    list_to_binary([rand:uniform(256) - 1 || _ <- lists:seq(1, N)]).
