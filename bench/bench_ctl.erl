%%% @doc The benchmark controller: starts two real nodes per carrier with `peer' (controlled over
%%% standard I/O; this node is not distributed), runs each scenario on node A against node B
%%% (bench_node), and writes the table, the JSON results and the plot data.
%%%
%%% Started by bench/run.sh as `erl -noshell -s bench_ctl main -extra --key value ...'.
-module(bench_ctl).

-export([main/0, main/1]).

-include_lib("public_key/include/public_key.hrl").

-define(CALL_TIMEOUT, 900000).
-define(BOOT_TIMEOUT, 60000).
-define(ALL_CARRIERS, [tcp, tls, quic]).
-define(ALL_SCENARIOS, [connect, reconnect, rtt, small, bulk, hol, busy, netns]).
-define(MiB, (1024 * 1024)).

%%% ------------------------------------------------------------------
%%% Entry point
%%% ------------------------------------------------------------------

main() ->
    main(init:get_plain_arguments()).

main(Args) ->
    Code = try run(parse_args(Args, #{})) of
               ok -> 0
           catch
               C:R:St ->
                   log("benchmark failed: ~p:~p~n~p", [C, R, St]),
                   1
           end,
    erlang:halt(Code).

parse_args([], Acc) -> Acc;
parse_args(["--" ++ Key, Value | Rest], Acc) ->
    parse_args(Rest, Acc#{list_to_atom(Key) => Value}).

run(Opts) ->
    Started = erlang:monotonic_time(millisecond),
    Quick = maps:get(quick, Opts, "false") =:= "true",
    Carriers = atoms(maps:get(carriers, Opts, "tcp,tls,quic")),
    Scenarios0 = atoms(maps:get(scenarios, Opts, "all")),
    Scenarios = [S || S <- ?ALL_SCENARIOS, lists:member(S, Scenarios0)],
    [error({unknown_carrier, C}) || C <- Carriers, not lists:member(C, ?ALL_CARRIERS)],
    [error({unknown_scenario, S}) || S <- Scenarios0, not lists:member(S, ?ALL_SCENARIOS)],
    Tmp = maps:get(tmp, Opts),
    Cfg = #{quick => Quick,
            params => params(Quick),
            tmp => Tmp,
            bench_ebin => filename:join(Tmp, "ebin"),
            cookie => "qdbench_" ++ os:getpid() ++ "_" ++
                integer_to_list(erlang:unique_integer([positive])),
            quic_flags => string:lexemes(maps:get('quic-flags', Opts, ""), " \t\n"),
            netns => netns_opt(Opts),
            netns_cmd => maps:get('netns-cmd', Opts, ""),
            clk_tck => list_to_integer(string:trim(os:cmd("getconf CLK_TCK")))},
    Cfg1 = Cfg#{tls_optfile => tls_certs(Cfg)},
    ok = filelib:ensure_dir(filename:join(Tmp, "plot/x")),
    log("carriers ~p, scenarios ~p~s", [Carriers, Scenarios,
                                          case Quick of true -> " (quick)"; false -> "" end]),
    Loopback = [S || S <- Scenarios, S =/= netns],
    Results0 = case Loopback of
                   [] -> #{};
                   _ -> run_loopback(Carriers, Loopback, Cfg1)
               end,
    {Results, NetnsStatus} =
        case lists:member(netns, Scenarios) of
            false -> {Results0, not_selected};
            true ->
                case maps:get(netns, Cfg1) of
                    {skip, Reason} ->
                        log("netns: skipped: ~s", [Reason]),
                        {Results0, {skipped, Reason}};
                    {ok, _} ->
                        Netns = run_netns(Carriers, Cfg1),
                        {maps:from_list([{C, maps:merge(maps:get(C, Results0, #{}),
                                                        maps:get(C, Netns))}
                                         || C <- Carriers]), ran}
                end
        end,
    Seconds = (erlang:monotonic_time(millisecond) - Started) / 1000,
    Rows = rows(Carriers, Results),
    Other = other_load(Results),
    Targets = bench_targets:check(Rows),
    %% The targets are quic_dist's: only a run with it says anything about them.
    {TargetsText, TargetsMd} = case lists:member(quic, Carriers) of
                                   true -> {bench_targets:text(Targets),
                                            bench_targets:markdown(Targets)};
                                   false -> {[], []}
                               end,
    Table = [table(Carriers, Rows, NetnsStatus, Other), TargetsText],
    ok = file:write_file(maps:get(table, Opts), Table),
    ok = file:write_file(maps:get(md, Opts),
                         [table_md(Carriers, Rows, NetnsStatus, Other), TargetsMd]),
    Json = #{machine => machine(),
             run => #{quick => Quick, carriers => Carriers, scenarios => Scenarios,
                      controller_seconds => Seconds,
                      netns => netns_json(NetnsStatus),
                      params => maps:get(params, Cfg1),
                      date => list_to_binary(string:trim(os:cmd("date -u +%Y-%m-%dT%H:%M:%SZ")))},
             table => [row_json(R) || R <- Rows],
             targets => bench_targets:json(Targets),
             details => Results},
    ok = file:write_file(maps:get(json, Opts), json(Json)),
    write_plot_data(Tmp, Carriers, Results),
    log("controller done in ~.1f s", [Seconds]),
    ok.

atoms("all") -> ?ALL_SCENARIOS;
atoms(S) -> [list_to_atom(X) || X <- string:lexemes(S, ",")].

netns_opt(Opts) ->
    case maps:get(netns, Opts, "skip:not requested") of
        "skip:" ++ Reason -> {skip, Reason};
        Spec ->
            [NsA, NsB, IpA, IpB] = string:lexemes(Spec, ","),
            {ok, #{ns_a => NsA, ns_b => NsB, ip_a => IpA, ip_b => IpB}}
    end.

netns_json(ran) -> #{status => ran};
netns_json(not_selected) -> #{status => not_selected};
netns_json({skipped, R}) -> #{status => skipped, reason => list_to_binary(R)}.

%%% ------------------------------------------------------------------
%%% Amount of work
%%% ------------------------------------------------------------------

params(false) ->
    %% Loopback: each scenario in `rounds' rounds, one repetition per carrier in each.
    #{connect => #{warm => 1, n => 2, rounds => 3},
      reconnect => #{warm => 1, n => 4, rounds => 3},
      rtt => #{warm => 1000, n => 10000, rounds => 3, max_ms => 15000,
               bursts => 10, burst_len => 20, idle_ms => 100},
      small => #{warm => 50000, total => 400000, payload => 100, rounds => 3,
                 senders => [1, 8]},
      bulk => #{sizes => [64 * 1024, ?MiB, 16 * ?MiB], total => 256 * ?MiB,
                warm => 32 * ?MiB, rounds => 3},
      hol => #{pings => 300, stream => 8 * ?MiB, window => 8, max_stream => 1000,
               max_ms => 5000, rounds => 3},
      busy => #{n => 300, spinners => 50, max_ms => 10000, rounds => 3},
      netns => #{rtt_warm => 100, rtt_n => 1000, reps => 3, max_ms => 8000,
                 %% Five: TCP's repetitions of 64 MiB under 1% loss moved 121-656 MB/s within
                 %% a minute, and three made a median of luck.
                 loss_bulk => 64 * ?MiB, loss_bulk_reps => 5,
                 rate_bulk => 16 * ?MiB, rate_rtt_n => 200, small_total => 100000,
                 hol_pings => 50, hol_window => 4, hol_max_ms => 6000, hol_reps => 2,
                 rate => <<"100mbit">>, loss_percent => 1}};
params(true) ->
    #{connect => #{warm => 1, n => 1, rounds => 2},
      reconnect => #{warm => 1, n => 2, rounds => 2},
      rtt => #{warm => 500, n => 5000, rounds => 2, max_ms => 10000,
               bursts => 5, burst_len => 20, idle_ms => 100},
      small => #{warm => 20000, total => 100000, payload => 100, rounds => 2,
                 senders => [1, 8]},
      bulk => #{sizes => [64 * 1024, ?MiB, 16 * ?MiB], total => 64 * ?MiB,
                warm => 16 * ?MiB, rounds => 2},
      hol => #{pings => 100, stream => 8 * ?MiB, window => 8, max_stream => 500,
               max_ms => 3000, rounds => 2},
      busy => #{n => 100, spinners => 50, max_ms => 5000, rounds => 2},
      netns => #{rtt_warm => 50, rtt_n => 500, reps => 2, max_ms => 5000,
                 loss_bulk => 16 * ?MiB, loss_bulk_reps => 2,
                 rate_bulk => 8 * ?MiB, rate_rtt_n => 100, small_total => 20000,
                 hol_pings => 20, hol_window => 4, hol_max_ms => 4000, hol_reps => 1,
                 rate => <<"100mbit">>, loss_percent => 1}}.

%%% ------------------------------------------------------------------
%%% Carriers in turns
%%% ------------------------------------------------------------------

%% Runs Measure(Carrier, A, B) Rounds times for every carrier, the carriers taking turns within
%% each round (tcp, tls, quic, tcp, ...), and returns #{Carrier => {[Result], OtherCores}}: the
%% results in round order, and the CPU that other processes used during them, in cores (null
%% when they took less than a second in all).
%%
%% Why turns: on the 2-core VMs this bench was written on, the host moves the two virtual CPUs
%% between cores that share a cache and cores that do not, for seconds to minutes at a time
%% (two threads bouncing a cache line: 55 against 330 ns a round trip), and every carrier's
%% bulk throughput halves on the far pair (1 MiB messages: TCP 3.3 -> 1.4 GB/s, quic_dist
%% 2.5 -> 1.4). One carrier's scenario after another's compared the machine's moods; in turns,
%% a change slows every carrier's repetitions alike.
in_turns(Label, Pairs, Rounds, Cfg, Measure) ->
    Pids = [os:getpid() | [os_pid(N) || {_, Nodes} <- Pairs, N <- Nodes]],
    Runs = [{C, measure_load(Label, Pids, Cfg, fun() -> Measure(C, A, B) end)}
            || _ <- lists:seq(1, Rounds), {C, [A, B]} <- Pairs],
    maps:from_list(
      [begin
           Mine = [X || {C1, X} <- Runs, C1 =:= C],
           %% CPU time counts in hundredths of seconds for each of our processes: judge only a
           %% second or more.
           Elapsed = lists:sum([E || {_, _, E} <- Mine]),
           Other = case Elapsed >= 1.0 of
                       true -> lists:sum([O || {_, O, _} <- Mine]) / Elapsed;
                       false -> null
                   end,
           case is_number(Other) andalso Other > 0.25 of
               true -> log("[~s] warning: other processes used ~.2f cores during ~s: "
                           "these figures are unreliable", [C, Other, Label]);
               false -> ok
           end,
           {C, {[R || {R, _, _} <- Mine], Other}}
       end || {C, _} <- Pairs]).

%% Fun's result, the CPU time (user + system, seconds) that every process but our nodes and
%% this controller used meanwhile, and the seconds it took. On a quiet machine the other CPU
%% time is near 0; other work running at the same time makes the figures unreliable.
%% `connect' starts nodes of its own, not counted: no figure there.
measure_load(connect, _Pids, _Cfg, Fun) ->
    {Fun(), 0.0, 0.0};
measure_load(_Label, Pids, Cfg, Fun) ->
    {Tot0, Ours0, T0} = load_sample(Pids, Cfg),
    R = Fun(),
    {Tot1, Ours1, T1} = load_sample(Pids, Cfg),
    {R, max(0.0, (Tot1 - Tot0) - (Ours1 - Ours0)), (T1 - T0) / 1000}.

%% Two nodes for each carrier, started together; Fun(Pairs) with Pairs = [{Carrier, [A, B]}];
%% every node stopped after.
with_pairs(Carriers, SpecsA, SpecsB, Cfg, Fun) ->
    Started = lists:foldl(
                fun(C, Acc) ->
                        try start_many(C, [SpecsA, SpecsB], Cfg) of
                            Nodes -> [{C, Nodes} | Acc]
                        catch
                            E:R:St ->
                                stop_nodes([N || {_, Ns} <- Acc, N <- Ns]),
                                erlang:raise(E, R, St)
                        end
                end, [], Carriers),
    Pairs = lists:reverse(Started),
    try
        [pong = call(A, net_adm, ping, [node_of(B)]) || {_, [A, B]} <- Pairs],
        Fun(Pairs)
    after
        stop_nodes([N || {_, Ns} <- Pairs, N <- Ns])
    end.

%%% ------------------------------------------------------------------
%%% Loopback scenarios
%%% ------------------------------------------------------------------

run_loopback(Carriers, Scenarios, Cfg) ->
    log("starting two nodes per carrier", []),
    with_pairs(Carriers, {"bench_a", "127.0.0.1", none}, {"bench_b", "127.0.0.1", none}, Cfg,
               fun(Pairs) ->
                       PerScenario =
                           [begin
                                #{rounds := Rounds} = maps:get(S, maps:get(params, Cfg)),
                                T0 = erlang:monotonic_time(millisecond),
                                Runs = in_turns(S, Pairs, Rounds, Cfg,
                                                fun(C, A, B) -> measure(S, C, A, B, Cfg) end),
                                log("~s: ~p rounds in ~.1f s", [S, Rounds,
                                     (erlang:monotonic_time(millisecond) - T0) / 1000]),
                                {S, Runs}
                            end || S <- Scenarios],
                       maps:from_list(
                         [{C, maps:from_list(
                                [{S, summarize(S, C, maps:get(C, Runs), Cfg)}
                                 || {S, Runs} <- PerScenario])}
                          || C <- Carriers])
               end).

%% One round of a scenario for one carrier, on node A against node B.
measure(connect, Carrier, _A, B, #{params := #{connect := P}} = Cfg) ->
    #{warm := Warm, n := N} = P,
    Names = [{"bench_c" ++ integer_to_list(erlang:unique_integer([positive])), "127.0.0.1",
              none} || _ <- lists:seq(1, Warm + N)],
    Fresh = start_many(Carrier, Names, Cfg),
    try
        Times = lists:nthtail(Warm, [call(C, bench_node, connect, [node_of(B)]) || C <- Fresh]),
        {[T / 1000 || {ok, T} <- Times], length([E || {error, _} = E <- Times])}
    after
        stop_nodes(Fresh)
    end;
measure(reconnect, _Carrier, A, B, #{params := #{reconnect := #{warm := Warm, n := N}}}) ->
    {Us, Failed} = call(A, bench_node, reconnect, [node_of(B), Warm, N]),
    {[U / 1000 || U <- Us], Failed};
measure(rtt, _Carrier, A, B, #{params := #{rtt := P}}) ->
    #{warm := Warm, n := N, max_ms := MaxMs, bursts := Bursts, burst_len := Len,
      idle_ms := IdleMs} = P,
    Loop = call(A, bench_node, rtt, [node_of(B), Warm, N, MaxMs]),
    {First, Rest} = call(A, bench_node, rtt_bursts, [node_of(B), Bursts, Len, IdleMs]),
    #{loop => Loop, burst_first => First, burst_rest => Rest};
measure(small, _Carrier, A, B, #{params := #{small := P}}) ->
    #{warm := Warm, total := Total, payload := Payload, senders := SendersList} = P,
    [{S, small_rate(A, B, S, Warm, Total, Payload)} || S <- SendersList];
measure(bulk, _Carrier, A, B, #{params := #{bulk := P}} = Cfg) ->
    #{sizes := Sizes, total := Total, warm := Warm} = P,
    Pids = [os_pid(A), os_pid(B)],
    Cpu0 = [cpu_seconds(Pid, Cfg) || Pid <- Pids],
    Per = [{Size, bulk_rate(A, B, Size, max(Size, Warm), Total)} || Size <- Sizes],
    Cpu1 = [cpu_seconds(Pid, Cfg) || Pid <- Pids],
    #{rates => [{Size, Rate} || {Size, {Rate, _}} <- Per],
      moved => lists:sum([Moved || {_, {_, Moved}} <- Per]),
      cpu => [C1 - C0 || {C0, C1} <- lists:zip(Cpu0, Cpu1)],
      quic_info => call(A, bench_node, quic_info, [node_of(B)])};
measure(hol, _Carrier, A, B, #{params := #{hol := P}}) ->
    #{pings := Pings, stream := Stream, window := Window, max_stream := MaxStream,
      max_ms := MaxMs} = P,
    hol_run(A, B, Pings, Stream, Window, MaxStream, MaxMs);
measure(busy, _Carrier, A, B, #{params := #{busy := P}}) ->
    #{n := N, spinners := Spinners, max_ms := MaxMs} = P,
    call(A, bench_node, rtt_busy, [node_of(B), N, Spinners, MaxMs]).

%% A carrier's results of a scenario from its rounds' (Runs, in round order) and the load
%% meanwhile.
summarize(connect, Carrier, {Runs, _}, _Cfg) ->
    {Ok, Failed} = times_and_failures(Runs),
    log("[~s] connect: fresh node to pong median ~.2f ms (~p runs, ~p failed)",
        [Carrier, median(Ok), length(Ok), Failed]),
    #{setup_ms => summary(Ok), failures => Failed};
summarize(reconnect, Carrier, {Runs, Other}, _Cfg) ->
    {Ms, Failed} = times_and_failures(Runs),
    log("[~s] reconnect: median ~.2f ms (~p runs, ~p failed)",
        [Carrier, median(Ms), length(Ms), Failed]),
    #{reconnect_ms => summary(Ms), failures => Failed, other_cpu_cores => Other};
summarize(rtt, Carrier, {Runs, Other}, _Cfg) ->
    R = latency([maps:get(loop, Run) || Run <- Runs]),
    First = latency([maps:get(burst_first, Run) || Run <- Runs]),
    Rest = latency([maps:get(burst_rest, Run) || Run <- Runs]),
    log("[~s] rtt: p50 ~.1f us, p99 ~.1f us, p99.9 ~.1f us; after idle: first ~.1f us, "
        "the rest of a burst p50 ~.1f us",
        [Carrier, maps:get(p50_us, R), maps:get(p99_us, R), maps:get(p999_us, R),
         maps:get(p50_us, First), maps:get(p50_us, Rest)]),
    R#{other_cpu_cores => Other,
       bursts => #{first => maps:remove(cdf_us, First), rest => maps:remove(cdf_us, Rest)}};
summarize(small, Carrier, {Runs, Other}, #{params := #{small := P}}) ->
    #{total := Total, senders := SendersList} = P,
    (maps:from_list(
       [begin
            R = rates_summary(msgs_per_s, [proplists:get_value(S, Run) || Run <- Runs],
                              #{messages => Total}),
            log("[~s] small messages, ~p sender(s): ~s msg/s (reps ~s)",
                [Carrier, S, fmt(maps:get(msgs_per_s, R)), fmt_list(maps:get(reps, R))]),
            {list_to_atom("senders_" ++ integer_to_list(S)), R}
        end || S <- SendersList]))#{other_cpu_cores => Other};
summarize(bulk, Carrier, {Runs, Other}, #{params := #{bulk := P}}) ->
    #{sizes := Sizes, total := Total} = P,
    PerSize = [begin
                   R = rates_summary(mb_per_s,
                                     [proplists:get_value(Size, Rates)
                                      || #{rates := Rates} <- Runs], #{bytes => Total}),
                   log("[~s] bulk ~s: ~s MB/s (reps ~s)",
                       [Carrier, size_name(Size), fmt(maps:get(mb_per_s, R)),
                        fmt_list(maps:get(reps, R))]),
                   {size_key(Size), R}
               end || Size <- Sizes],
    Moved = lists:sum([M || #{moved := M} <- Runs]),
    [CpuA, CpuB] = [Secs / (Moved / 1.0e9)
                    || Secs <- lists:foldl(fun(#{cpu := [A, B]}, [SA, SB]) -> [SA + A, SB + B] end,
                                           [0, 0], Runs)],
    log("[~s] cpu: ~.2f s/GB (sender ~.2f, receiver ~.2f) over ~.2f GB",
        [Carrier, CpuA + CpuB, CpuA, CpuB, Moved / 1.0e9]),
    #{quic_info := Info} = lists:last(Runs),
    (maps:from_list(PerSize))#{
      cpu => #{s_per_gb => CpuA + CpuB, sender_s_per_gb => CpuA,
               receiver_s_per_gb => CpuB, gb_moved => Moved / 1.0e9},
      quic_info => case Info of undefined -> null; _ -> Info end,
      other_cpu_cores => Other};
summarize(busy, Carrier, {Runs, Other}, #{params := #{busy := #{spinners := Spinners}}}) ->
    R = latency(Runs),
    log("[~s] rtt, the peer's schedulers busy with ~p processes: p50 ~.1f us, p99 ~.1f us",
        [Carrier, Spinners, maps:get(p50_us, R), maps:get(p99_us, R)]),
    R#{spinners => Spinners, other_cpu_cores => Other};
summarize(hol, Carrier, {Runs, Other}, _Cfg) ->
    R = hol_summary(Runs),
    log("[~s] head-of-line: p50 ~s us, p99 ~s us (~p pings), stream ~s MB/s",
        [Carrier, fmt(maps:get(p50_us, R)), fmt(maps:get(p99_us, R)),
         maps:get(samples, R), fmt(maps:get(stream_mb_per_s, R))]),
    R#{other_cpu_cores => Other}.

%% The times of every round ({Times, Failures} each) and the failures in all.
times_and_failures(Runs) ->
    {lists:append([T || {T, _} <- Runs]), lists:sum([F || {_, F} <- Runs])}.

%% 100-byte (Payload) messages from Senders processes, after Warm of them: messages/s of Total,
%% every message counted.
small_rate(A, B, Senders, Warm, Total, Payload) ->
    _ = call(A, bench_node, small, [node_of(B), Senders, Warm, Payload]),
    {Secs, Count} = call(A, bench_node, small, [node_of(B), Senders, Total, Payload]),
    Count = (Total div Senders) * Senders,
    Count / Secs.

%% Total bytes as Size-byte binaries after Warm bytes: {MB/s, bytes moved with the warm-up}.
bulk_rate(A, B, Size, Warm, Total) ->
    {_, WarmBytes} = call(A, bench_node, bulk, [node_of(B), Size, Warm]),
    {Secs, Bytes} = call(A, bench_node, bulk, [node_of(B), Size, Total]),
    {Bytes / Secs / 1.0e6, WarmBytes + Bytes}.

%% Round trips of one pair while another pair streams Stream-byte messages:
%% {Latencies, StreamBytes, StreamSeconds}.
hol_run(A, B, Pings, Stream, Window, MaxStream, MaxMs) ->
    call(A, bench_node, hol, [node_of(B), Pings, Stream, Window, MaxStream, MaxMs]).

%% The latencies of every round and the stream's median MB/s.
hol_summary(Runs) ->
    (latency([S || {S, _, _} <- Runs]))#{
      stream_mb_per_s => median([Bytes / Secs / 1.0e6 || {_, Bytes, Secs} <- Runs])}.

rates_summary(Key, Rates, Extra) ->
    Extra#{Key => median(Rates), reps => Rates}.

%%% ------------------------------------------------------------------
%%% Between two network namespaces
%%% ------------------------------------------------------------------

%% Two nodes per carrier, one in each namespace; under 1% loss, then on the rate-limited link,
%% each measurement in turns as on loopback.
run_netns(Carriers, #{netns := {ok, NS}} = Cfg) ->
    #{ns_a := NsA, ns_b := NsB, ip_a := IpA, ip_b := IpB} = NS,
    log("netns: starting two nodes per carrier in ~s and ~s", [NsA, NsB]),
    netns_cond(none, Cfg),
    try
        with_pairs(Carriers, {"bench_na", IpA, NsA}, {"bench_nb", IpB, NsB}, Cfg,
                   fun(Pairs) -> netns_scenarios(Carriers, Pairs, Cfg) end)
    after
        netns_cond(none, Cfg)
    end.

netns_scenarios(Carriers, Pairs, #{params := #{netns := P}} = Cfg) ->
    #{rtt_warm := RW, rtt_n := RN, reps := Reps, max_ms := MaxMs} = P,
    #{small_total := SmallTotal, hol_pings := HolPings, hol_window := HolWindow,
      hol_max_ms := HolMaxMs, hol_reps := HolReps} = P,
    Turns = fun(Label, Rounds, Measure) -> in_turns(Label, Pairs, Rounds, Cfg, Measure) end,
    Rtt = fun(Warm, N) ->
                  fun(_, A, B) -> call(A, bench_node, rtt, [node_of(B), Warm, N, MaxMs]) end
          end,
    %% Each repetition: {MB/s, {bytes, packets} the link carried meanwhile}.
    Bulk = fun(Total) -> fun(_, A, B) ->
                                 {Bytes0, Packets0} = link_sent(Cfg),
                                 {Rate, _} = bulk_rate(A, B, ?MiB, max(?MiB, Total div 4), Total),
                                 {Bytes1, Packets1} = link_sent(Cfg),
                                 {Rate, {Bytes1 - Bytes0, Packets1 - Packets0}}
                         end end,
    Small = fun(_, A, B) -> small_rate(A, B, 8, max(8, SmallTotal div 5), SmallTotal, 100) end,
    Hol = fun(_, A, B) -> hol_run(A, B, HolPings, 8 * ?MiB, HolWindow, 100, HolMaxMs) end,
    Cond = fun(Name, RttMeasure, BulkTotal, BulkReps) ->
                   netns_cond(Name, Cfg),
                   #{rtt => Turns("netns rtt", Reps, RttMeasure),
                     bulk_1m => Turns("netns bulk", BulkReps, Bulk(BulkTotal)),
                     small_8 => Turns("netns small", Reps, Small),
                     hol => Turns("netns hol", HolReps, Hol),
                     bulk_bytes => BulkTotal, small_messages => SmallTotal}
           end,
    %% 1% loss each way, then the rate-limited link (tbf both ways).
    Loss = Cond(loss, Rtt(RW, RN), maps:get(loss_bulk, P), maps:get(loss_bulk_reps, P)),
    Rate = Cond(rate, Rtt(20, maps:get(rate_rtt_n, P)), maps:get(rate_bulk, P), Reps),
    netns_cond(none, Cfg),
    maps:from_list(
      [{C, begin
               L = netns_summary(C, Loss),
               R = netns_summary(C, Rate),
               log("[~s] netns loss ~p%: rtt p50 ~s us p99 ~s us, bulk 1 MiB ~s MB/s "
                   "(~p bytes a packet on the link), "
                   "100 B msgs from 8 senders ~s msg/s, head-of-line p50 ~s us p99 ~s us",
                   [C, maps:get(loss_percent, P), fmt(get_path([rtt, p50_us], L)),
                    fmt(get_path([rtt, p99_us], L)), fmt(get_path([bulk_1m, mb_per_s], L)),
                    get_path([bulk_1m, link_bytes_per_packet], L),
                    fmt(get_path([small_8, msgs_per_s], L)), fmt(get_path([hol, p50_us], L)),
                    fmt(get_path([hol, p99_us], L))]),
               log("[~s] netns rate ~s: rtt p50 ~s us, bulk 1 MiB ~s MB/s, "
                   "100 B msgs from 8 senders ~s msg/s, head-of-line p50 ~s us p99 ~s us",
                   [C, maps:get(rate, P), fmt(get_path([rtt, p50_us], R)),
                    fmt(get_path([bulk_1m, mb_per_s], R)), fmt(get_path([small_8, msgs_per_s], R)),
                    fmt(get_path([hol, p50_us], R)), fmt(get_path([hol, p99_us], R))]),
               Other = lists:max([0.0 | [O || M <- [Loss, Rate],
                                              {_, #{C := {_, O}}} <- maps:to_list(M),
                                              is_number(O)]]),
               #{netns_loss => L, netns_rate => R, netns_other_cpu_cores => Other}
           end} || C <- Carriers]).

%% One carrier's figures of one namespace condition.
netns_summary(C, #{rtt := Rtt, bulk_1m := Bulk, small_8 := Small, hol := Hol,
                   bulk_bytes := BulkTotal, small_messages := SmallTotal}) ->
    {RttRuns, _} = maps:get(C, Rtt),
    {BulkRuns, _} = maps:get(C, Bulk),
    BulkRates = [Rate || {Rate, _} <- BulkRuns],
    {SmallRates, _} = maps:get(C, Small),
    {HolRuns, _} = maps:get(C, Hol),
    #{rtt => latency(RttRuns),
      bulk_1m => rates_summary(mb_per_s, BulkRates,
                               #{bytes => BulkTotal,
                                 link_bytes_per_packet =>
                                     link_bytes_per_packet(C, [Sent || {_, Sent} <- BulkRuns])}),
      small_8 => rates_summary(msgs_per_s, SmallRates, #{messages => SmallTotal}),
      hol => hol_summary(HolRuns)}.

%% What the sending side's end of the link sent so far: {Bytes, Packets}.
link_sent(#{netns := {ok, #{ns_a := NsA}}, netns_cmd := Cmd}) ->
    Out = os:cmd(lists:flatten(io_lib:format("~s sent ~s", [Cmd, NsA]))),
    case string:lexemes(Out, " \n") of
        [Bytes, Packets] -> {list_to_integer(Bytes), list_to_integer(Packets)};
        _ -> error({netns_sent_failed, Out})
    end.

%% Bytes per packet on the link during Carrier's bulk transfers ([{Bytes, Packets}], one per
%% repetition). A wire carries at most one MTU (1500 bytes) a packet; more means segmentation
%% offloads let batches cross whole and the loss rule dropped whole batches (as it did for
%% quic_dist before 2026-12-06): that carrier's figures would not be comparable, and the run
%% says so.
link_bytes_per_packet(Carrier, Sent) ->
    PerPacket = round(lists:sum([B || {B, _} <- Sent]) / max(1, lists:sum([P || {_, P} <- Sent]))),
    PerPacket > 1600 andalso
        log("[~s] warning: the namespace link carried ~b bytes a packet, more than its MTU: "
            "segmentation offloads are on and losses hit whole batches; these figures are not "
            "comparable", [Carrier, PerPacket]),
    PerPacket.

netns_cond(Cond, #{netns := {ok, #{ns_a := NsA, ns_b := NsB}}, netns_cmd := Cmd,
                   params := #{netns := P}}) ->
    Line = lists:flatten(io_lib:format("~s cond ~s ~s ~s ~s ~b 2>&1; echo \"rc=$?\"",
                                       [Cmd, Cond, NsA, NsB, maps:get(rate, P),
                                        maps:get(loss_percent, P)])),
    Out = os:cmd(Line),
    case string:find(Out, "rc=0") of
        nomatch -> error({netns_cond_failed, Cond, Out});
        _ -> ok
    end.

%%% ------------------------------------------------------------------
%%% Nodes
%%% ------------------------------------------------------------------

%% Starts nodes in parallel: [{Name, Host, Namespace | none}].
start_many(Carrier, Specs, Cfg) ->
    Parent = self(),
    Ws = [spawn_monitor(fun() -> Parent ! {self(), start_node(Carrier, Spec, Cfg)} end)
          || Spec <- Specs],
    Results = [receive
                   {W, Node} -> demonitor(M, [flush]), {ok, Node};
                   {'DOWN', M, process, W, Reason} -> {error, Reason}
               end || {W, M} <- Ws],
    case [R || {error, R} <- Results] of
        [] -> [N || {ok, N} <- Results];
        [Reason | _] ->
            stop_nodes([N || {ok, N} <- Results]),
            error({node_start_failed, Carrier, Reason})
    end.

start_node(Carrier, {Name0, Host, Ns}, Cfg) ->
    Name = Name0 ++ "_" ++ atom_to_list(Carrier) ++ "_" ++ os:getpid(),
    Args = ["-setcookie", maps:get(cookie, Cfg),
            "-pa", maps:get(bench_ebin, Cfg),
            "-connect_all", "false",
            "-kernel", "net_ticktime", "60"] ++ carrier_args(Carrier, Cfg),
    Exec = case Ns of
               none -> #{};
               _ -> #{exec => {os:find_executable("ip"),
                               ["netns", "exec", Ns, os:find_executable("erl")]}}
           end,
    {ok, Pid, Node} = peer:start(Exec#{name => Name, host => Host, longnames => true,
                                       connection => standard_io,
                                       wait_boot => ?BOOT_TIMEOUT, args => Args}),
    unlink(Pid),
    OsPid = peer:call(Pid, bench_node, os_pid, [], ?CALL_TIMEOUT),
    Expected = case Carrier of tcp -> error; tls -> {ok, [["inet_tls"]]};
                   quic -> {ok, [["quic"]]} end,
    Expected = peer:call(Pid, init, get_argument, [proto_dist], ?CALL_TIMEOUT),
    #{peer => Pid, node => Node, os_pid => OsPid, name => Name}.

carrier_args(tcp, _Cfg) -> [];
carrier_args(tls, Cfg) ->
    ["-proto_dist", "inet_tls", "-ssl_dist_optfile", maps:get(tls_optfile, Cfg)];
carrier_args(quic, #{quic_flags := []}) ->
    error(no_quic_flags);
carrier_args(quic, #{quic_flags := Flags}) ->
    Flags.

stop_nodes(Nodes) ->
    [catch peer:stop(P) || #{peer := P} <- Nodes],
    [ensure_gone(N) || N <- Nodes],
    ok.

%% peer:stop/1 closes the control channel and the node halts; make sure it did (bounded),
%% then SIGKILL it (only if /proc still shows our node's name for that pid).
ensure_gone(#{os_pid := OsPid, name := Name}) ->
    _ = os:cmd(io_lib:format("timeout 5 tail --pid=~s -f /dev/null", [OsPid])),
    case file:read_file("/proc/" ++ OsPid ++ "/cmdline") of
        {ok, Cmd} ->
            case binary:match(Cmd, list_to_binary(Name)) of
                nomatch -> ok;
                _ -> os:cmd("kill -9 " ++ OsPid), ok
            end;
        _ -> ok
    end.

call(#{peer := Pid}, M, F, A) ->
    peer:call(Pid, M, F, A, ?CALL_TIMEOUT).

node_of(#{node := N}) -> N.
os_pid(#{os_pid := P}) -> P.

%% utime + stime of an OS process, seconds.
cpu_seconds(OsPid, #{clk_tck := Tck}) ->
    {ok, Bin} = file:read_file("/proc/" ++ OsPid ++ "/stat"),
    [_, After] = string:split(binary_to_list(Bin), ")", trailing),
    Fields = string:lexemes(After, " "),
    %% After the command name: field 3 (state) is the first; utime is 14, stime 15.
    (list_to_integer(lists:nth(12, Fields)) + list_to_integer(lists:nth(13, Fields))) / Tck.

load_sample(Pids, #{clk_tck := Tck} = Cfg) ->
    {ok, Stat} = file:read_file("/proc/stat"),
    [Cpu | _] = string:split(Stat, "\n"),
    [_, User, Nice, System | _] = string:lexemes(binary_to_list(Cpu), " "),
    Total = (list_to_integer(User) + list_to_integer(Nice) + list_to_integer(System)) / Tck,
    Ours = lists:sum([cpu_seconds(P, Cfg) || P <- Pids]),
    {Total, Ours, erlang:monotonic_time(millisecond)}.

%%% ------------------------------------------------------------------
%%% TLS certificates for inet_tls_dist
%%% ------------------------------------------------------------------

%% ECDSA P-256 chains (as quic_dist uses) from public_key:pkix_test_data/1, written as PEM
%% files, and the -ssl_dist_optfile: TLS 1.3 only, peers verified both ways.
tls_certs(#{tmp := Tmp, netns := NS}) ->
    Dir = filename:join(Tmp, "tls"),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Ips = ["127.0.0.1" | case NS of
                             {ok, #{ip_a := IpA, ip_b := IpB}} -> [IpA, IpB];
                             _ -> []
                         end],
    San = #'Extension'{extnID = ?'id-ce-subjectAltName', critical = false,
                       extnValue = [{dNSName, "localhost"}] ++
                           [{dNSName, Ip} || Ip <- Ips] ++
                           [{iPAddress, list_to_binary(tuple_to_list(element(2,
                                                         inet:parse_address(Ip))))}
                            || Ip <- Ips]},
    K = [{key, {namedCurve, secp256r1}}, {digest, sha256}],
    Chain = #{root => K, intermediates => [], peer => K ++ [{extensions, [San]}]},
    #{server_config := Server, client_config := Client} =
        public_key:pkix_test_data(#{server_chain => Chain, client_chain => Chain}),
    Opts = fun(Role, Conf) ->
                   Cert = filename:join(Dir, Role ++ ".pem"),
                   Key = filename:join(Dir, Role ++ "_key.pem"),
                   Ca = filename:join(Dir, Role ++ "_ca.pem"),
                   {cert, CertDer} = lists:keyfind(cert, 1, Conf),
                   {key, {KeyType, KeyDer}} = lists:keyfind(key, 1, Conf),
                   {cacerts, CaDers} = lists:keyfind(cacerts, 1, Conf),
                   ok = file:write_file(Cert, public_key:pem_encode(
                                                [{'Certificate', CertDer, not_encrypted}])),
                   ok = file:write_file(Key, public_key:pem_encode(
                                               [{KeyType, KeyDer, not_encrypted}])),
                   ok = file:write_file(Ca, public_key:pem_encode(
                                              [{'Certificate', D, not_encrypted}
                                               || D <- CaDers])),
                   [{certfile, Cert}, {keyfile, Key}, {cacertfile, Ca},
                    {verify, verify_peer}, {versions, ['tlsv1.3']}]
           end,
    Terms = [{server, Opts("server", Server) ++ [{fail_if_no_peer_cert, true}]},
             {client, Opts("client", Client)}],
    File = filename:join(Dir, "ssl_dist.conf"),
    ok = file:write_file(File, io_lib:format("~p.~n", [Terms])),
    File.

%%% ------------------------------------------------------------------
%%% Statistics
%%% ------------------------------------------------------------------

%% Round-trip runs (lists of ns) -> median over runs of each percentile, in microseconds.
latency(Runs) ->
    Per = [percentiles(R) || R <- Runs, R =/= []],
    Pooled = lists:sort(lists:append(Runs)),
    Med = fun(K) -> median([maps:get(K, P) || P <- Per]) end,
    #{p50_us => Med(p50), p99_us => Med(p99), p999_us => Med(p999),
      max_us => lists:last(Pooled) / 1000,
      samples => length(Pooled), reps => Per,
      cdf_us => cdf(Pooled)}.

percentiles(Samples) ->
    T = list_to_tuple(lists:sort(Samples)),
    #{p50 => pct(T, 0.5) / 1000, p99 => pct(T, 0.99) / 1000, p999 => pct(T, 0.999) / 1000}.

pct(T, Q) ->
    N = tuple_size(T),
    element(max(1, min(N, ceil(Q * N))), T).

%% [[Microseconds, Fraction <= it]] at quantiles, finer in the tail, for the plot.
cdf([]) -> [];
cdf(Sorted) ->
    T = list_to_tuple(Sorted),
    Qs = [I / 200 || I <- lists:seq(1, 198)] ++
        [0.99 + I / 1000 || I <- lists:seq(0, 9)] ++
        [0.999, 0.9995, 0.9999, 1.0],
    [[pct(T, Q) / 1000, Q] || Q <- Qs].

summary([]) -> #{median => null, samples => []};
summary(L) -> #{median => median(L), min => lists:min(L), max => lists:max(L), samples => L}.

median([]) -> null;
median(L) ->
    S = lists:sort(L),
    N = length(S),
    case N rem 2 of
        1 -> lists:nth(N div 2 + 1, S);
        0 -> (lists:nth(N div 2, S) + lists:nth(N div 2 + 1, S)) / 2
    end.

%%% ------------------------------------------------------------------
%%% Table
%%% ------------------------------------------------------------------

%% {Id, Label, Unit, Better, Path}: Path into the per-carrier results.
row_specs() ->
    [{connect_ms, "connect: fresh node to pong", "ms", lower, [connect, setup_ms, median]},
     {reconnect_ms, "reconnect: disconnect, ping", "ms", lower,
      [reconnect, reconnect_ms, median]},
     {rtt_p50_us, "ping-pong RTT p50", "us", lower, [rtt, p50_us]},
     {rtt_p99_us, "ping-pong RTT p99", "us", lower, [rtt, p99_us]},
     {rtt_p999_us, "ping-pong RTT p99.9", "us", lower, [rtt, p999_us]},
     {rtt_idle_first_us, "RTT after 100 ms idle", "us", lower, [rtt, bursts, first, p50_us]},
     {rtt_burst_p50_us, "RTT p50, rest of 20 after idle", "us", lower,
      [rtt, bursts, rest, p50_us]},
     {small_1_msgs, "100 B msgs, 1 sender", "msg/s", higher,
      [small, senders_1, msgs_per_s]},
     {small_8_msgs, "100 B msgs, 8 senders", "msg/s", higher,
      [small, senders_8, msgs_per_s]},
     {bulk_64k, "bulk 64 KiB msgs", "MB/s", higher, [bulk, '64KiB', mb_per_s]},
     {bulk_1m, "bulk 1 MiB msgs", "MB/s", higher, [bulk, '1MiB', mb_per_s]},
     {bulk_16m, "bulk 16 MiB msgs", "MB/s", higher, [bulk, '16MiB', mb_per_s]},
     {cpu_s_per_gb, "CPU, both nodes, bulk", "s/GB", lower, [bulk, cpu, s_per_gb]},
     {cpu_sender, "  of which sender", "s/GB", lower, [bulk, cpu, sender_s_per_gb]},
     {cpu_receiver, "  of which receiver", "s/GB", lower, [bulk, cpu, receiver_s_per_gb]},
     {hol_p50_us, "RTT p50 under 8 MiB stream", "us", lower, [hol, p50_us]},
     {hol_p99_us, "RTT p99 under 8 MiB stream", "us", lower, [hol, p99_us]},
     {hol_stream, "  8 MiB stream meanwhile", "MB/s", higher, [hol, stream_mb_per_s]},
     {busy_p50_us, "RTT p50, peer's schedulers busy", "us", lower, [busy, p50_us]},
     {busy_p99_us, "RTT p99, peer's schedulers busy", "us", lower, [busy, p99_us]}] ++
        netns_row_specs(loss, netns_loss, "netns 1% loss") ++
        netns_row_specs(rate, netns_rate, "netns 100 Mbit/s").

%% The rows of one namespace condition; its RTT p99 only under loss, where it shows the
%% carriers' retransmission timers.
netns_row_specs(Prefix, Key, Name) ->
    Id = fun(Suffix) -> list_to_atom(atom_to_list(Prefix) ++ "_" ++ Suffix) end,
    [{Id("rtt_p50"), Name ++ ": RTT p50", "us", lower, [Key, rtt, p50_us]}] ++
        [{Id("rtt_p99"), Name ++ ": RTT p99", "us", lower, [Key, rtt, p99_us]}
         || Prefix =:= loss] ++
        [{Id("bulk"), Name ++ ": bulk 1 MiB", "MB/s", higher, [Key, bulk_1m, mb_per_s]},
         {Id("small_8"), Name ++ ": 100 B, 8 senders", "msg/s", higher,
          [Key, small_8, msgs_per_s]},
         {Id("hol_p50"), Name ++ ": RTT p50 w/ stream", "us", lower, [Key, hol, p50_us]},
         {Id("hol_p99"), Name ++ ": RTT p99 w/ stream", "us", lower, [Key, hol, p99_us]},
         {Id("hol_stream"), "  8 MiB stream meanwhile", "MB/s", higher,
          [Key, hol, stream_mb_per_s]}].

rows(Carriers, Results) ->
    [#{id => Id, label => Label, unit => Unit, better => Better,
       values => maps:from_list([{C, get_path(Path, maps:get(C, Results, #{}))}
                                 || C <- Carriers])}
     || {Id, Label, Unit, Better, Path} <- row_specs(),
        lists:any(fun(C) -> get_path(Path, maps:get(C, Results, #{})) =/= null end, Carriers)].

get_path([], V) when is_number(V) -> V;
get_path([], _) -> null;
get_path([K | Rest], M) when is_map(M) ->
    case maps:find(K, M) of
        {ok, V} -> get_path(Rest, V);
        error -> null
    end;
get_path(_, _) -> null.

row_json(#{values := V} = R) ->
    Ratios = maps:from_list([{list_to_atom(atom_to_list(C) ++ "_over_tcp"), ratio(X, V)}
                             || {C, X} <- maps:to_list(V), C =/= tcp]),
    R#{label := list_to_binary(maps:get(label, R)), unit := list_to_binary(maps:get(unit, R)),
       ratios => Ratios}.

ratio(X, V) ->
    case maps:get(tcp, V, null) of
        T when is_number(T), is_number(X), T /= 0 -> X / T;
        _ -> null
    end.

%% The highest `other_cpu_cores' of any scenario.
other_load(Results) ->
    lists:max([0.0 | [V || {_, CR} <- maps:to_list(Results), {_, SR} <- maps:to_list(CR),
                           {K, V} <- case SR of
                                         M when is_map(M) -> maps:to_list(M);
                                         X -> [{netns_other_cpu_cores, X}]
                                     end,
                           K =:= other_cpu_cores orelse K =:= netns_other_cpu_cores,
                           is_number(V)]]).

table(Carriers, Rows, NetnsStatus, Other) ->
    RatioCols = [C || C <- Carriers, C =/= tcp, lists:member(tcp, Carriers)],
    Header = [pad("scenario", 38), pad("unit", 7)] ++
        [lpad(atom_to_list(C), 11) || C <- Carriers] ++
        [lpad(atom_to_list(C) ++ "/tcp", 10) || C <- RatioCols],
    Lines = [[pad(Label, 38), pad(Unit, 7)] ++
                 [lpad(fmt(maps:get(C, V)), 11) || C <- Carriers] ++
                 [lpad(fmt_ratio(ratio(maps:get(C, V), V)), 10) || C <- RatioCols]
             || #{label := Label, unit := Unit, values := V} <- Rows],
    Note = case NetnsStatus of
               {skipped, Reason} -> ["netns scenarios (1% loss, rate-limited link): skipped: ",
                                     Reason, "\n"];
               _ -> []
           end,
    LoadNote = case Other > 0.25 of
                   true -> io_lib:format("WARNING: other processes on this machine used up to ~.2f "
                                         "cores during a scenario: figures are unreliable~n",
                                         [Other]);
                   false -> io_lib:format("other processes' CPU during the scenarios: at most "
                                          "~.2f cores (quiet machine)~n", [Other])
               end,
    Sep = lists:duplicate(length(lists:flatten(Header)), $-),
    [string:trim(lists:flatten(Header), trailing), "\n", Sep, "\n",
     [[string:trim(lists:flatten(L), trailing), "\n"] || L <- Lines],
     "ratios are carrier/tcp: above 1 is better for msg/s and MB/s, worse for ms, us and s/GB\n",
     Note, LoadNote].

%% The same as a Markdown table (for bench/README.md).
table_md(Carriers, Rows, NetnsStatus, Other) ->
    RatioCols = [C || C <- Carriers, C =/= tcp, lists:member(tcp, Carriers)],
    Names = #{tcp => "inet_tcp_dist", tls => "inet_tls_dist", quic => "quic_dist"},
    Header = ["| scenario | unit |"] ++ [[" ", maps:get(C, Names), " |"] || C <- Carriers] ++
        [[" ", atom_to_list(C), "/tcp |"] || C <- RatioCols],
    Align = ["|---|---|"] ++ ["---:|" || _ <- Carriers] ++ ["---:|" || _ <- RatioCols],
    Lines = [["| ", string:trim(Label), " | ", Unit, " |"] ++
                 [[" ", fmt(maps:get(C, V)), " |"] || C <- Carriers] ++
                 [[" ", fmt_ratio(ratio(maps:get(C, V), V)), " |"] || C <- RatioCols]
             || #{label := Label, unit := Unit, values := V} <- Rows],
    Notes = [case NetnsStatus of
                 {skipped, Reason} -> ["\nnetns scenarios: skipped: ", Reason, "\n"];
                 _ -> []
             end,
             case Other > 0.25 of
                 true -> io_lib:format("~nWARNING: other processes used up to ~.2f cores "
                                       "during a scenario: figures are unreliable.~n", [Other]);
                 false -> []
             end],
    [Header, "\n", Align, "\n", [[L, "\n"] || L <- Lines], Notes].

pad(S, N) -> string:pad(S, N).
lpad(S, N) -> string:pad(S, N, leading).

fmt(null) -> "-";
fmt(X) when is_integer(X) -> fmt(float(X));
fmt(X) when X >= 1.0e6 -> io_lib:format("~.2fM", [X / 1.0e6]);
fmt(X) when X >= 10000 -> io_lib:format("~.1fk", [X / 1000]);
fmt(X) when X >= 100 -> integer_to_list(round(X));
fmt(X) when X >= 10 -> io_lib:format("~.1f", [X]);
fmt(X) -> io_lib:format("~.2f", [X]).

fmt_ratio(null) -> "-";
fmt_ratio(X) when X >= 100 -> integer_to_list(round(X));
fmt_ratio(X) when X >= 10 -> io_lib:format("~.1f", [X]);
fmt_ratio(X) when X >= 0.01; X =< 0 -> io_lib:format("~.2f", [X]);
%% Below a hundredth (a latency against TCP's under loss): two significant digits, not 0.00.
fmt_ratio(X) -> float_to_list(X, [{decimals, 1 - floor(math:log10(X))}, compact]).

fmt_list(L) -> lists:join(", ", [fmt(X) || X <- L]).

size_key(S) -> list_to_atom(size_name(S)).
size_name(S) when S >= ?MiB -> integer_to_list(S div ?MiB) ++ "MiB";
size_name(S) -> integer_to_list(S div 1024) ++ "KiB".

%%% ------------------------------------------------------------------
%%% Plot data
%%% ------------------------------------------------------------------

write_plot_data(Tmp, Carriers, Results) ->
    lists:foreach(
      fun({Scenario, File}) ->
              lists:foreach(
                fun(C) ->
                        Cdf = get_cdf([Scenario], maps:get(C, Results, #{})),
                        Name = filename:join([Tmp, "plot", File ++ "_" ++ atom_to_list(C)
                                              ++ ".dat"]),
                        case Cdf of
                            [] -> ok;
                            _ -> ok = file:write_file(
                                        Name, [io_lib:format("~.3f ~.6f~n", [Us, 1 - Q])
                                               || [Us, Q] <- Cdf, Q < 1.0])
                        end
                end, Carriers)
      end, [{rtt, "rtt"}, {hol, "hol"}]).

get_cdf(Path, Results) ->
    case lists:foldl(fun(K, M) when is_map(M) -> maps:get(K, M, #{}); (_, _) -> #{} end,
                     Results, Path) of
        #{cdf_us := Cdf} -> Cdf;
        _ -> []
    end.

%%% ------------------------------------------------------------------
%%% Machine
%%% ------------------------------------------------------------------

machine() ->
    Cpu = case file:read_file("/proc/cpuinfo") of
              {ok, B} ->
                  case re:run(B, "model name\\s*:\\s*([^\\n]*)",
                              [{capture, all_but_first, binary}]) of
                      {match, [M]} -> M;
                      _ -> <<"unknown">>
                  end;
              _ -> <<"unknown">>
          end,
    Mem = case file:read_file("/proc/meminfo") of
              {ok, MB} ->
                  case re:run(MB, "MemTotal:\\s*(\\d+)", [{capture, all_but_first, list}]) of
                      {match, [Kb]} -> list_to_integer(Kb) div 1024;
                      _ -> null
                  end;
              _ -> null
          end,
    #{nproc => list_to_integer(string:trim(os:cmd("nproc"))),
      cpu_model => Cpu,
      mem_mib => Mem,
      kernel => list_to_binary(string:trim(os:cmd("uname -r"))),
      otp_release => list_to_binary(erlang:system_info(otp_release)),
      otp_version => otp_version(),
      erts => list_to_binary(erlang:system_info(version)),
      hostname => list_to_binary(string:trim(os:cmd("hostname")))}.

otp_version() ->
    F = filename:join([code:root_dir(), "releases", erlang:system_info(otp_release),
                       "OTP_VERSION"]),
    case file:read_file(F) of
        {ok, V} -> string:trim(V);
        _ -> list_to_binary(erlang:system_info(otp_release))
    end.

%%% ------------------------------------------------------------------
%%% JSON (OTP 25 has no json module)
%%% ------------------------------------------------------------------

json(Term) -> [enc(Term), "\n"].

enc(null) -> "null";
enc(true) -> "true";
enc(false) -> "false";
enc(A) when is_atom(A) -> enc(atom_to_binary(A, utf8));
enc(I) when is_integer(I) -> integer_to_list(I);
enc(F) when is_float(F) -> float_to_list(F, [{decimals, 6}, compact]);
enc(B) when is_binary(B) -> [$", escape(B), $"];
enc(P) when is_pid(P); is_reference(P); is_port(P) -> enc(list_to_binary(io_lib:format("~p", [P])));
enc(M) when is_map(M) ->
    Pairs = lists:sort([{key(K), V} || {K, V} <- maps:to_list(M)]),
    ["{", lists:join(",", [[enc(K), ":", enc(V)] || {K, V} <- Pairs]), "}"];
enc(L) when is_list(L) ->
    ["[", lists:join(",", [enc(X) || X <- L]), "]"];
enc(T) when is_tuple(T) -> enc(tuple_to_list(T)).

key(K) when is_atom(K) -> atom_to_binary(K, utf8);
key(K) when is_binary(K) -> K;
key(K) -> list_to_binary(io_lib:format("~p", [K])).

escape(B) ->
    [case C of
         $" -> "\\\"";
         $\\ -> "\\\\";
         $\n -> "\\n";
         $\t -> "\\t";
         C when C < 32 -> io_lib:format("\\u~4.16.0b", [C]);
         C -> <<C/utf8>>
     end || <<C/utf8>> <= B].

%%% ------------------------------------------------------------------
%%% Log (stderr: stdout is kept for the table)
%%% ------------------------------------------------------------------

log(Fmt, Args) ->
    T = case persistent_term:get({?MODULE, t0}, undefined) of
            undefined ->
                T0 = erlang:monotonic_time(millisecond),
                persistent_term:put({?MODULE, t0}, T0),
                0;
            T0 -> erlang:monotonic_time(millisecond) - T0
        end,
    io:format(standard_error, "bench ~6.1f s: " ++ Fmt ++ "~n", [T / 1000 | Args]).
