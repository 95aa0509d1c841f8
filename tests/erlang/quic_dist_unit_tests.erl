%%% @doc Unit tests of quic_dist's pure parts (no distribution): option parsing, certificate
%%% generation and inspection, node names, and select/1.
-module(quic_dist_unit_tests).

-include_lib("eunit/include/eunit.hrl").

%%% ------------------------------------------------------------------
%%% quic_dist_opts:parse_pairs/1
%%% ------------------------------------------------------------------

parse_pairs_empty_test() ->
    ?assertEqual(#{}, quic_dist_opts:parse_pairs([])).

parse_pairs_files_stay_strings_test() ->
    ?assertEqual(#{certfile => "/etc/q/node.pem", keyfile => "/etc/q/node_key.pem",
                   cacertfile => "/etc/q/ca.pem", log_filter => "quinn=debug"},
                 quic_dist_opts:parse_pairs(["certfile", "/etc/q/node.pem",
                                             "keyfile", "/etc/q/node_key.pem",
                                             "cacertfile", "/etc/q/ca.pem",
                                             "log_filter", "quinn=debug"])).

parse_pairs_integers_test() ->
    ?assertEqual(#{port => 4370, streams => 3, idle_timeout_ms => 30000,
                   handshake_timeout_ms => 5000, max_frame => 1048576,
                   stream_window => 16777216, connection_window => 67108864},
                 quic_dist_opts:parse_pairs(["port", "4370", "streams", "3",
                                             "idle_timeout_ms", "30000",
                                             "handshake_timeout_ms", "5000",
                                             "max_frame", "1048576",
                                             "stream_window", "16777216",
                                             "connection_window", "67108864"])).

parse_pairs_ip_test() ->
    ?assertEqual(#{ip => {127, 0, 0, 1}}, quic_dist_opts:parse_pairs(["ip", "127.0.0.1"])),
    ?assertEqual(#{ip => {0, 0, 0, 0, 0, 0, 0, 1}}, quic_dist_opts:parse_pairs(["ip", "::1"])).

parse_pairs_errors_test() ->
    ?assertError({missing_value, "certfile"}, quic_dist_opts:parse_pairs(["certfile"])),
    ?assertError({missing_value, "port"},
                 quic_dist_opts:parse_pairs(["certfile", "f", "port"])),
    ?assertError({bad_option, port, "not_a_number", "an integer"},
                 quic_dist_opts:parse_pairs(["port", "not_a_number"])),
    ?assertError({bad_option, ip, "999.1.1.1", _},
                 quic_dist_opts:parse_pairs(["ip", "999.1.1.1"])),
    %% A switch is true or false: "yes" must not quietly turn node-name checks off.
    ?assertError({bad_option, verify_node_name, "yes", "true or false"},
                 quic_dist_opts:parse_pairs(["verify_node_name", "yes"])),
    ?assertError({bad_option, insecure, "on", "true or false"},
                 quic_dist_opts:parse_pairs(["insecure", "on"])).

parse_pairs_booleans_and_lists_test() ->
    ?assertEqual(#{verify_node_name => false, insecure => true,
                   allowed_subjects => ["CN=a,O=x", "b"]},
                 quic_dist_opts:parse_pairs(["verify_node_name", "false", "insecure", "true",
                                             "allowed_subjects", "CN=a,O=x;b"])).

%% The poller's window doubles after a busy turn (4 datagrams or more) that the next turn
%% followed within ten windows of poll_us, up to ten times poll_us; anything else starts over.
poller_turn_window_test() ->
    Now = 1000000,
    %% The first turn, and a turn after a trickle (one or three datagrams), however soon.
    ?assertEqual(100, quic_dist_receiver:turn_window(100, {100, 0, 0}, Now)),
    ?assertEqual(100, quic_dist_receiver:turn_window(100, {100, 1, Now - 50}, Now)),
    ?assertEqual(100, quic_dist_receiver:turn_window(100, {400, 3, Now - 50}, Now)),
    %% Busy turns followed soon: 100, 200, 400, 800, 1000, 1000.
    ?assertEqual(200, quic_dist_receiver:turn_window(100, {100, 4, Now - 999}, Now)),
    Next = fun(_, [W | _] = Ws) ->
                   [quic_dist_receiver:turn_window(100, {W, 50, Now - 10}, Now) | Ws]
           end,
    ?assertEqual([100, 200, 400, 800, 1000, 1000],
                 lists:reverse(lists:foldl(Next, [100], lists:seq(1, 5)))),
    %% A busy turn followed late: back to poll_us.
    ?assertEqual(100, quic_dist_receiver:turn_window(100, {800, 50, Now - 1000}, Now)).

%% The poller hands its turn to an input handler after 16 reads in a row of one datagram each;
%% an input handler hands it back after 4 reads in a row of several. A read of the other kind
%% starts the count over; a poller with no input handler to hand to (none) counts nothing.
turn_switch_test() ->
    Reads = fun(Switch, Ns) ->
                    lists:foldl(fun(_, switch) -> switch;
                                   (N, Streak) -> quic_dist_receiver:read_streak(Switch, N, Streak)
                                end, 0, Ns)
            end,
    ?assertEqual(15, Reads(light, lists:duplicate(15, 1))),
    ?assertEqual(switch, Reads(light, lists:duplicate(16, 1))),
    ?assertEqual(10, Reads(light, lists:duplicate(10, 1) ++ [3] ++ lists:duplicate(10, 1))),
    ?assertEqual(3, Reads(burst, [8, 2, 5])),
    ?assertEqual(switch, Reads(burst, [8, 2, 5, 8])),
    ?assertEqual(1, Reads(burst, [8, 2, 5, 1, 8])),
    ?assertEqual(0, Reads(none, lists:duplicate(100, 1) ++ lists:duplicate(100, 8))).

%% An input handler holding a turn keeps its core between datagrams for 100 µs; the poller
%% gives it away at every empty read.
turn_yield_test() ->
    ?assertNot(quic_dist_receiver:yield_if_empty(burst, 60)),
    ?assert(quic_dist_receiver:yield_if_empty(burst, 101)),
    ?assert(quic_dist_receiver:yield_if_empty(light, 0)),
    ?assert(quic_dist_receiver:yield_if_empty(none, 0)).

%% The modules loaded when the node listens all exist (a name that does not would be skipped
%% silently, and the first connection would wait for it again).
connection_modules_exist_test() ->
    Modules = quic_dist:connection_modules(),
    ?assert(lists:member(dist_util, Modules)),
    ?assertEqual([], [M || M <- Modules, code:which(M) =:= non_existing]).

poll_us_option_test() ->
    ?assertEqual(#{poll_us => 0}, quic_dist_opts:parse_pairs(["poll_us", "0"])),
    ?assertEqual(100, quic_dist_opts:poll_us(#{})),
    ?assertEqual(0, quic_dist_opts:poll_us(#{poll_us => 0})),
    ?assertEqual(2000, quic_dist_opts:poll_us(#{poll_us => 2000})),
    ?assertError({bad_option, poll_us, -1, _}, quic_dist_opts:poll_us(#{poll_us => -1})),
    ?assertError({bad_option, poll_us, fast, _}, quic_dist_opts:poll_us(#{poll_us => fast})).

%% Values with which no connection could work are refused at start, with the range.
numeric_option_ranges_test() ->
    T = fun(Opts) -> quic_dist_opts:transport(Opts) end,
    ?assertMatch(#{idle_timeout_ms := 0}, T(#{idle_timeout_ms => 0})),
    ?assertMatch(#{idle_timeout_ms := 1000, handshake_timeout_ms := 1000, max_frame := 1048576,
                   stream_window := 65536, connection_window := 65536, mixed_window := 0},
                 T(#{idle_timeout_ms => 1000, handshake_timeout_ms => 1000, max_frame => 1048576,
                     stream_window => 65536, connection_window => 65536, mixed_window => 0})),
    Refused = [{idle_timeout_ms, 999}, {idle_timeout_ms, -1}, {handshake_timeout_ms, 0},
               {max_frame, 10}, {stream_window, 0}, {connection_window, 1},
               {mixed_window, -1}, {stream_window, 1 bsl 32}, {max_frame, "big"}],
    [?assertError({bad_option, K, V, _}, T(#{K => V})) || {K, V} <- Refused],
    %% The port, checked with the other options at start (sys.config here).
    _ = application:load(quic_dist),
    try
        ok = application:set_env(quic_dist, port, 70000),
        ?assertError({bad_option, port, 70000, _}, quic_dist_opts:get()),
        ok = application:set_env(quic_dist, port, 65535),
        ?assertMatch(#{port := 65535}, quic_dist_opts:get())
    after
        application:unset_env(quic_dist, port)
    end.

congestion_option_test() ->
    ?assertEqual(#{congestion => bbr}, quic_dist_opts:parse_pairs(["congestion", "bbr"])),
    ?assertMatch(#{congestion := cubic}, quic_dist_opts:transport(#{})),
    ?assertMatch(#{congestion := new_reno},
                 quic_dist_opts:transport(#{congestion => new_reno})),
    ?assertError({bad_option, congestion, vegas, _},
                 quic_dist_opts:transport(#{congestion => vegas})).

%% A peer's identity refusal is recognised in the close reason the transport reports, and its
%% words come out as one printable line; any other close is not a refusal.
peer_refusal_test() ->
    ?assertEqual({refused, <<"refused by v@h: subject CN=x   is not allowed">>},
                 quic_dist_identity:peer_refusal(
                   <<"closed by peer: refused by v@h: subject CN=x\n\t is not allowed">>)),
    ?assertEqual({refused, <<"refused by v@h: CN=\x{e9}"/utf8>>},
                 quic_dist_identity:peer_refusal("closed by peer: refused by v@h: CN=\x{e9}")),
    ?assertEqual(other, quic_dist_identity:peer_refusal(
                          <<"closed by peer: distribution connection down: normal">>)),
    ?assertEqual(other, quic_dist_identity:peer_refusal(<<"refused by v@h: not from a close">>)),
    ?assertEqual(other,
                 quic_dist_identity:peer_refusal(<<"idle timeout: no packet from the peer">>)).

%% bench/bench_targets.erl (not part of the carrier, compiled here): a target is met only if
%% every ratio it names is on the right side of its bound, and not measured without a figure.
bench_targets_test() ->
    {ok, Mod, Beam} = compile:file("bench/bench_targets.erl", [binary, return_errors]),
    {module, Mod} = code:load_binary(Mod, "bench_targets.erl", Beam),
    Row = fun(Id, Tcp, Tls, Quic) -> #{id => Id, values => #{tcp => Tcp, tls => Tls,
                                                               quic => Quic}} end,
    Rows = [Row(bulk_1m, 4000, 100, 2000),          % 20x TLS, 0.5x TCP: met (bounds included)
            Row(small_8_msgs, 300, 200, 590),       % 2.95x TLS: missed
            Row(rtt_p50_us, 70, 140, 30),
            Row(connect_ms, 16, 110, 16),           % equal to TCP: met
            Row(hol_p99_us, 20000, 3.0e6, 4001),    % 0.20005x: missed
            Row(loss_bulk, 500, 60, 500)],          % level, not above: missed
    Verdicts = [V || #{verdict := V} <- bench_targets:check(Rows)],
    ?assertEqual([met, missed, met, met, missed, missed], Verdicts),
    ?assertEqual([not_measured, missed, met, met, missed, not_measured],
                 [V || #{verdict := V} <- bench_targets:check(tl(Rows) -- [lists:last(Rows)])]),
    ?assertMatch({match, _}, re:run(bench_targets:text(bench_targets:check(Rows)),
                                   "bulk 1 MiB: >= 10x TLS and >= 0.5x TCP +20.00x TLS, "
                                   "0.50x TCP +met")).

%%% ------------------------------------------------------------------
%%% quic_dist_certs:generate/3 and quic_dist_cert_info:summary/1
%%% ------------------------------------------------------------------

certs_test_() ->
    {setup, fun make_tmp_dir/0, fun remove_dir/1,
     fun(Dir) ->
             [{"generate writes the CA and node files", fun() -> t_generate_files(Dir) end},
              {"summary shows CN, SANs, issuer and validity", fun() -> t_summary(Dir) end},
              {"node certificate chains to the CA", fun() -> t_chain(Dir) end},
              {"a second generate reuses the CA", fun() -> t_reuse_ca(Dir) end},
              {"summary of garbage is an error", fun t_summary_garbage/0},
              {"validity in Unix seconds", fun() -> t_validity(Dir) end}]
     end}.

%% 2023-11-14T22:13:20Z and 2024-11-13T22:13:20Z.
-define(NOT_BEFORE, 1700000000).
-define(NOT_AFTER, 1731536000).

make_tmp_dir() ->
    Dir = filename:join(tmp_root(), "quic_dist_unit_" ++ os:getpid() ++ "_" ++
                            integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    ok = quic_dist_certs:generate(Dir, [{"alpha", ["alpha.example.com", "127.0.0.1", "::1"]},
                                        {"beta", ["beta.example.com"]}],
                                  #{not_before => ?NOT_BEFORE, not_after => ?NOT_AFTER}),
    %% Default validity (now - 1 h .. now + 365 days), same CA.
    ok = quic_dist_certs:generate(Dir, [{"current", ["current.example.com"]}]),
    Dir.

tmp_root() ->
    case os:getenv("TMPDIR") of
        false -> "/tmp";
        "" -> "/tmp";
        T -> T
    end.

remove_dir(Dir) ->
    ok = file:del_dir_r(Dir).

t_generate_files(Dir) ->
    [?assert(filelib:is_regular(filename:join(Dir, F)))
     || F <- ["ca.pem", "ca_key.pem", "alpha.pem", "alpha_key.pem", "beta.pem", "beta_key.pem",
              "current.pem", "current_key.pem"]],
    %% Keys are private to the owner.
    [?assertEqual(8#600, mode(filename:join(Dir, F)) band 8#777)
     || F <- ["ca_key.pem", "alpha_key.pem", "beta_key.pem", "current_key.pem"]],
    %% Each file holds what its name says.
    ?assertMatch([{'Certificate', _, not_encrypted}], pem(filename:join(Dir, "alpha.pem"))),
    ?assertMatch([{'Certificate', _, not_encrypted}], pem(filename:join(Dir, "ca.pem"))),
    [{KeyType, _, not_encrypted}] = pem(filename:join(Dir, "alpha_key.pem")),
    ?assert(lists:member(KeyType, ['PrivateKeyInfo', 'ECPrivateKey', 'RSAPrivateKey'])).

t_summary(Dir) ->
    S = quic_dist_cert_info:summary(cert_der(filename:join(Dir, "alpha.pem"))),
    ?assertMatch(#{subject := _, issuer := _, subject_alt_names := _}, S),
    ?assert(has_part(maps:get(subject, S), <<"CN=alpha">>)),
    ?assert(has_part(maps:get(issuer, S), <<"CN=quic_dist cluster CA">>)),
    ?assertEqual(lists:sort([{dns, <<"alpha.example.com">>}, {ip, {127, 0, 0, 1}},
                             {ip, {0, 0, 0, 0, 0, 0, 0, 1}}]),
                 lists:sort(maps:get(subject_alt_names, S))),
    ?assertEqual(<<"2023-11-14T22:13:20Z">>, maps:get(not_before, S)),
    ?assertEqual(<<"2024-11-13T22:13:20Z">>, maps:get(not_after, S)),
    SB = quic_dist_cert_info:summary(cert_der(filename:join(Dir, "beta.pem"))),
    ?assert(has_part(maps:get(subject, SB), <<"CN=beta">>)),
    ?assertEqual([{dns, <<"beta.example.com">>}], maps:get(subject_alt_names, SB)).

t_chain(Dir) ->
    CaDer = cert_der(filename:join(Dir, "ca.pem")),
    [?assert(public_key:pkix_is_issuer(cert_der(filename:join(Dir, F)), CaDer))
     || F <- ["alpha.pem", "beta.pem", "current.pem"]],
    %% Full path validation (signature, validity, extensions) of a certificate valid now.
    ?assertMatch({ok, _},
                 public_key:pkix_path_validation(CaDer, [cert_der(filename:join(Dir, "current.pem"))],
                                                 [])),
    %% alpha's validity ended in 2024.
    ?assertEqual({error, {bad_cert, cert_expired}},
                 public_key:pkix_path_validation(CaDer, [cert_der(filename:join(Dir, "alpha.pem"))],
                                                 [])).

t_reuse_ca(Dir) ->
    {ok, CaBefore} = file:read_file(filename:join(Dir, "ca.pem")),
    ok = quic_dist_certs:generate(Dir, [{"gamma", ["gamma.example.com"]}], #{days => 1}),
    ?assertEqual({ok, CaBefore}, file:read_file(filename:join(Dir, "ca.pem"))),
    Der = cert_der(filename:join(Dir, "gamma.pem")),
    ?assert(public_key:pkix_is_issuer(Der, cert_der(filename:join(Dir, "ca.pem")))),
    S = quic_dist_cert_info:summary(Der),
    ?assert(has_part(maps:get(subject, S), <<"CN=gamma">>)),
    ?assertEqual([{dns, <<"gamma.example.com">>}], maps:get(subject_alt_names, S)).

t_validity(Dir) ->
    ?assertEqual({ok, {?NOT_BEFORE, ?NOT_AFTER}},
                 quic_dist_cert_info:validity(cert_der(filename:join(Dir, "alpha.pem")))),
    ?assertMatch({error, _}, quic_dist_cert_info:validity(<<"not a certificate">>)).

t_summary_garbage() ->
    ?assertMatch(#{error := _}, quic_dist_cert_info:summary(<<"not a certificate">>)).

mode(File) ->
    {ok, Info} = file:read_file_info(File),
    element(8, Info).

pem(File) ->
    {ok, Bin} = file:read_file(File),
    public_key:pem_decode(Bin).

cert_der(File) ->
    [{'Certificate', Der, not_encrypted}] = pem(File),
    Der.

has_part(Bin, Part) ->
    binary:match(Bin, Part) =/= nomatch.

%%% ------------------------------------------------------------------
%%% quic_dist:is_node_name/1 and select/1
%%% ------------------------------------------------------------------

is_node_name_test_() ->
    [?_assert(quic_dist:is_node_name('a@b')),
     ?_assert(quic_dist:is_node_name('node@127.0.0.1')),
     ?_assert(quic_dist:is_node_name('node@host.example.com')),
     ?_assertNot(quic_dist:is_node_name('nohost')),
     ?_assertNot(quic_dist:is_node_name('@host')),
     ?_assertNot(quic_dist:is_node_name('a@b@c')),
     ?_assertNot(quic_dist:is_node_name("a@b")),
     ?_assertNot(quic_dist:is_node_name(<<"a@b">>)),
     ?_assertNot(quic_dist:is_node_name(42))].

select_test_() ->
    [?_assert(quic_dist:select('x@127.0.0.1')),
     ?_assert(quic_dist:select('x@localhost')),
     %% RFC 6761: .invalid never resolves.
     {timeout, 30, ?_assertNot(quic_dist:select('x@no-such-host.invalid'))},
     ?_assertNot(quic_dist:select('no_host_part'))].

%% quic_dist_urgency: high priority only for little data on a node with runnable processes.
urgency_test() ->
    D = fun quic_dist_urgency:decide/4,
    P = fun({_, _, Priority}) -> Priority end,
    U0 = {0, 0, normal},
    %% Going idle after a while: high on a busy node, normal on an idle one.
    ?assertEqual(high, P(D(0, 1000, 3, U0))),
    ?assertEqual(normal, P(D(0, 1000, 0, U0))),
    Busy = D(0, 1000, 3, U0),
    %% Small messages keep it high; 1 MiB at once (bulk) brings it down at once.
    ?assertEqual(high, P(D(200, 1001, 0, Busy))),
    Bulk = D(1024 * 1024, 1001, 0, Busy),
    ?assertEqual(normal, P(Bulk)),
    %% Idle 100 us after bulk: not refilled yet, stays normal though the node is busy.
    ?assertEqual(normal, P(D(0, 1101, 3, Bulk))),
    %% 3 ms after: refilled, high again.
    ?assertEqual(high, P(D(0, 4001, 3, Bulk))),
    %% A steady 1 KiB every 10 us (100 MB/s, above the rate): normal within a few ms.
    Steady = lists:foldl(fun(T, U) -> D(1024, T, 0, D(0, T, 3, U)) end, Busy,
                         lists:seq(1010, 6000, 10)),
    ?assertEqual(normal, P(Steady)),
    %% 100 B every 10 us (10 MB/s): stays high.
    Light = lists:foldl(fun(T, U) -> D(100, T, 0, D(0, T, 3, U)) end, Busy,
                        lists:seq(1010, 6000, 10)),
    ?assertEqual(high, P(Light)).
