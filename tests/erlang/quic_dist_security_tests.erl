%%% @doc Security tests of the quic_dist carrier with real nodes (started with `peer', controlled
%%% over standard I/O; the test runner is not distributed) and a rogue client
%%% (crates/quic_dist_transport/examples/quic_dist_probe.rs).
%%%
%%% Every kind of bad input must be (a) refused, (b) with a clear log line on the refusing node
%%% (and on the other side when it is one of our nodes), and (c) leave the refusing node alive,
%%% its already established connection working (same connection, no nodedown, rpc through it)
%%% and new good connections possible.
%%%
%%% Each node's default logger handler writes to a file of its own (configured on the command
%%% line, so that boot-time lines are caught too; level info from the start of the tests);
%%% assertions read the part of the file written since a mark taken before the bad attempt.
%%% Set QUIC_DIST_TEST_SHOW_LOGS=1 to print the log lines each case matched.
-module(quic_dist_security_tests).

-include_lib("eunit/include/eunit.hrl").
-include_lib("public_key/include/public_key.hrl").

-define(P, quic_dist_test_peers).
-define(WATCHER, qdt_sec_watcher).
-define(LOG_WAIT_MS, 10000).
-define(LOOPBACK, {127, 0, 0, 1}).

%%% ------------------------------------------------------------------
%%% Test generators
%%% ------------------------------------------------------------------

%% Certificate mode: V is the node under attack. G holds an established connection to V for the
%% whole group; N makes a new connection to V after every case.
certificate_mode_test_() ->
    {timeout, 170,
     {setup, fun cert_setup/0, fun cleanup/1,
      fun(Ctx) ->
              {inorder,
               [tcase("peer certificate signed by another CA: refused both ways",
                      fun t_other_ca/1, Ctx),
                tcase("expired certificate: refused both ways, and the node warns of its own",
                      fun t_expired/1, Ctx),
                tcase("a certificate close to expiry: the node warns of it",
                      fun t_expiring/1, Ctx),
                tcase("certificate for another host: the dialing side checks the server name, "
                      "the accepting side the claimed node name; the node was warned at start",
                      fun t_wrong_host/1, Ctx),
                tcase("a certificate without subjectAltName (CN only): refused, and both logs "
                      "say that it names no host", fun t_no_subject_alt_name/1, Ctx),
                tcase("no client certificate (probe nocert)", fun t_no_client_cert/1, Ctx),
                tcase("allowed_subjects refuses another subject, both ways",
                      fun t_allowed_subjects/1, Ctx),
                tcase("wrong cookie over a valid QUIC connection, both ways",
                      fun t_wrong_cookie_cert_mode/1, Ctx),
                tcase("5000 garbage datagrams to the listening port", fun t_garbage/1, Ctx),
                tcase("QUIC client with another ALPN", fun t_wrong_alpn/1, Ctx),
                tcase("valid QUIC, then a frame announcing 0xFFFFFFFF bytes",
                      fun t_oversize_frame/1, Ctx),
                tcase("valid QUIC, then a malformed handshake (truncated name message)",
                      fun(C) -> t_malformed_handshake(C, "garbage") end, Ctx),
                tcase("valid QUIC, then a first message that is not a name message",
                      fun(C) -> t_malformed_handshake(C, "notname") end, Ctx)]}
      end}}.

%% Encrypted private keys and the insecure option.
keys_and_insecure_test_() ->
    {timeout, 120,
     {setup, fun keys_setup/0, fun cleanup/1,
      fun(Ctx) ->
              {inorder,
               [tcase("encrypted private keys (legacy PEM and PKCS#8) with the password option",
                      fun t_encrypted_keys/1, Ctx),
                tcase("the key in the certificate's file (no keyfile option): connects both ways",
                      fun t_key_in_certfile/1, Ctx),
                tcase("insecure true: connects with untrusted certificates, warns loudly at "
                      "start, and a verifying node still refuses it", fun t_insecure/1, Ctx)]}
      end}}.

%% Cookie mode (the default): trust derived from the cookie.
cookie_mode_test_() ->
    {timeout, 120,
     {setup, fun cookie_setup/0, fun cleanup/1,
      fun(Ctx) ->
              [tcase("a node with another cookie cannot complete the QUIC handshake, both ways",
                     fun t_cookie_mode_other_cookie/1, Ctx)]
      end}}.

%% A passive observer between two nodes sees nothing readable.
observer_test_() ->
    {timeout, 120,
     {setup, fun observer_setup/0, fun cleanup/1,
      fun(Ctx) ->
              [tcase("passive observer: the capture holds no node name, cookie or payload",
                     fun t_passive_observer/1, Ctx)]
      end}}.

tcase(Title, Fun, Ctx) ->
    {Title, {timeout, 60, fun() -> run_case(Fun, Ctx) end}}.

%% Runs a case; if it fails, prints what every node logged meanwhile, then fails.
run_case(Fun, #{nodes := Nodes} = Ctx) ->
    Marks = [{Peer, mark(Peer)} || Peer <- maps:values(Nodes)],
    try
        Fun(Ctx)
    catch
        Class:Reason:Stack ->
            [dump_log(Peer, Mark) || {Peer, Mark} <- Marks],
            erlang:raise(Class, Reason, Stack)
    end.

dump_log(Peer, Mark) ->
    case catch log_since(Peer, Mark) of
        Text when is_binary(Text), Text =/= <<>> ->
            Lines = binary:split(string:trim(Text), <<"\n">>, [global]),
            Last = lists:nthtail(max(0, length(Lines) - 40), Lines),
            io:format(user, "~n    --- ~s logged (last ~b of ~b lines) ---~n~ts~n",
                      [role_name(Peer), length(Last), length(Lines),
                       [["      ", L, "\n"] || L <- Last]]);
        _ ->
            ok
    end.

%%% ------------------------------------------------------------------
%%% Fixtures
%%% ------------------------------------------------------------------

cert_setup() ->
    Env = env(),
    C = maps:get(certs, Env),
    Cert = fun(Name) -> cert_opts(C, Name, ca1) end,
    Specs = [{v, Cert(good) ++ ["allowed_subjects", "good;wronghost"], qdt_sec},
             {g, Cert(good), qdt_sec},
             {n, Cert(good), qdt_sec},
             {r, cert_opts(C, rogue, ca1), qdt_sec},       % signed by CA2, trusts CA1
             {e, Cert(expired), qdt_sec},
             {s, Cert(expiring), qdt_sec},                  % valid for one more hour
             {w, Cert(wronghost), qdt_sec},                 % names other.example only
             {m, Cert(nosan), qdt_sec},                     % no subjectAltName at all
             {o, Cert(outsider), qdt_sec},                  % subject not allowed by v
             {k, Cert(good), qdt_sec_other_cookie}],        % good certificate, wrong cookie
    Ctx = start_nodes(Env, Specs),
    established(Ctx, g, v).

keys_setup() ->
    Env = env(),
    C = maps:get(certs, Env),
    Good = maps:get(good, C),
    Ca1 = maps:get(ca1, C),
    Specs = [{v, cert_opts(C, good, ca1), qdt_sec},
             {g, cert_opts(C, good, ca1), qdt_sec},
             {n, cert_opts(C, good, ca1), qdt_sec},
             {p1, ["certfile", Good, "keyfile", maps:get(legacy_key, C), "cacertfile", Ca1,
                   "password", maps:get(password, C)], qdt_sec},
             {p2, ["certfile", Good, "keyfile", maps:get(pkcs8_key, C), "cacertfile", Ca1,
                   "password", maps:get(password, C)], qdt_sec},
             {c1, ["certfile", maps:get(good_with_key, C), "cacertfile", Ca1], qdt_sec},
             {i1, cert_opts(C, rogue, ca1) ++ ["insecure", "true"], qdt_sec},
             {i2, cert_opts(C, rogue2, ca1) ++ ["insecure", "true"], qdt_sec}],
    Ctx = start_nodes(Env, Specs),
    established(Ctx, g, v).

cookie_setup() ->
    Env = env(),
    Specs = [{v, [], qdt_sec_a}, {g, [], qdt_sec_a}, {n, [], qdt_sec_a},
             {x, [], qdt_sec_b}],
    Ctx = start_nodes(Env, Specs),
    established(Ctx, g, v).

observer_setup() ->
    Env = env(),
    Cookie = ?P:unique_name("cookie"),
    Ctx = start_nodes(Env, [{a, [], Cookie, ["-epmd_module", "quic_dist_test_epmd"]},
                            {b, [], Cookie, []}]),
    Ctx#{cookie => Cookie}.

cleanup(#{reg := Reg, dir := Dir}) ->
    ?P:cleanup(Reg),
    _ = file:del_dir_r(Dir),
    ok.

%% Common environment: carrier on the code path, probe built, certificates made.
env() ->
    Root = root(),
    ok = build_probe(Root),
    Dir = filename:join("/tmp", ?P:unique_name("sec")),
    ok = filelib:ensure_dir(filename:join([Dir, "logs", "x"])),
    #{root => Root, dir => Dir, probe => probe_path(Root), certs => make_certs(Dir)}.

%% Starts the nodes in parallel. Spec: {Role, QuicDistOpts, Cookie} or with extra erl args.
start_nodes(#{dir := Dir} = Env, Specs) ->
    Reg = ?P:new_registry(),
    try
        Named = [{Role, ?P:unique_name(atom_to_list(Role)), Spec} || Spec <- Specs,
                                                                   Role <- [element(1, Spec)]],
        Opts = [#{name => Name,
                  cookie => element(3, Spec),
                  args => quic_opts(element(2, Spec)) ++ extra_args(Spec)
                      ++ log_args(log_file(Dir, Name)) ++ ["-connect_all", "false"]}
                || {_Role, Name, Spec} <- Named],
        Peers = ?P:start_many(Reg, Opts),
        %% The peer helper starts nodes at level warning (first -kernel logger_level wins);
        %% info shows how each side saw a refused connection. Boot-time warnings (such as the
        %% insecure one) are in the file anyway.
        [ok = call(P, logger, set_primary_config, [level, info]) || P <- Peers],
        Nodes = maps:from_list(
                  [{Role, Peer#{log => log_file(Dir, Name), port => port_of(Peer)}}
                   || {{Role, Name, _}, Peer} <- lists:zip(Named, Peers)]),
        Env#{reg => Reg, nodes => Nodes}
    catch
        Class:Reason:Stack ->
            ?P:cleanup(Reg),
            erlang:raise(Class, Reason, Stack)
    end.

extra_args({_, _, _, Extra}) -> Extra;
extra_args(_) -> [].

quic_opts([]) -> [];
quic_opts(Pairs) -> ["-quic_dist_opt" | Pairs].

%% Every event at info and above goes to File: the default handler writes there instead of
%% to standard I/O (the control channel, forwarded to the runner's console). Being the default
%% handler, it also gets the events buffered during boot, before kernel added its handlers
%% (distribution starts before that).
log_args(File) ->
    ["-kernel", "logger",
     lists:flatten(io_lib:format("[{handler,default,logger_std_h,"
                                 "#{level=>all,config=>#{file=>~p},"
                                 "formatter=>{logger_formatter,"
                                 "#{single_line=>true,legacy_header=>false}}}}]", [File]))].

log_file(Dir, Name) ->
    filename:join([Dir, "logs", Name ++ ".log"]).

%% Connects From to To and remembers the connection: it must survive every case.
established(#{nodes := Nodes} = Ctx, From, To) ->
    F = maps:get(From, Nodes),
    T = maps:get(To, Nodes),
    NT = ?P:nodename(T),
    true = call(F, net_kernel, connect_node, [NT]),
    NT = call(F, rpc, call, [NT, erlang, node, []]),
    _ = call(F, ?P, watch, [?WATCHER, [{monitor_node, NT}]]),
    Ctx#{established => {From, To, dist_ctrl(F, NT)}}.

%%% ------------------------------------------------------------------
%%% Certificate mode
%%% ------------------------------------------------------------------

t_other_ca(Ctx) ->
    %% Every CA made by quic_dist_certs has the same name, so rustls finds "its" issuer and
    %% the signature check fails (BadSignature); a CA with another name gives UnknownIssuer.
    refused_both_ways(Ctx, r, "(UnknownIssuer|BadSignature)"),
    healthy(Ctx).

t_expired(#{nodes := #{e := E}} = Ctx) ->
    refused_both_ways(Ctx, e, "[Ee]xpired"),
    _ = expect_log(E, 0, ["this node's certificate \\(.*expired\\.pem\\) expired at "
                          "[0-9-]+T.*renew the files"]),
    healthy(Ctx).

t_expiring(#{nodes := #{s := S, v := V}} = Ctx) ->
    _ = expect_log(S, 0, ["this node's certificate \\(.*expiring\\.pem\\) expires at "
                          "[0-9-]+T.*renew the files"]),
    %% A certificate with a year left says nothing.
    ?assertEqual(nomatch, re:run(log_since(V, 0), "this node's certificate")),
    healthy(Ctx).

%% Bad node B dials V (V refuses B's client certificate), then V dials B (V refuses B's server
%% certificate). Both are TLS failures, logged by the Rust side of V.
refused_both_ways(#{nodes := #{v := V} = Nodes}, Bad, Why) ->
    B = maps:get(Bad, Nodes),
    {NV, NB} = {?P:nodename(V), ?P:nodename(B)},
    %% B dials V.
    {MV, MB} = {mark(V), mark(B)},
    refused_connect(B, NV),
    expect_log(V, MV, ["refused incoming connection remote=127\\.0\\.0\\.1:" ++ port(B)
                       ++ " .*" ++ Why]),
    %% TLS 1.3: the client has usually finished its handshake when the server refuses its
    %% certificate, so B hears of it as the peer closing the connection; or, if the refusal
    %% arrives first, as a failed connect.
    expect_log(B, MB, ["(peer closed the connection with an error remote=127\\.0\\.0\\.1:"
                       ++ port(V) ++ "|" ++ cannot_connect(NV, V)
                       ++ ") .*the peer does not trust this node's certificate .*" ++ Why]),
    %% V dials B.
    {MV2, MB2} = {mark(V), mark(B)},
    refused_connect(V, NB),
    expect_log(V, MV2, [cannot_connect(NB, B)
                        ++ " connection: this node does not trust the peer's certificate .*"
                        ++ Why]),
    expect_log(B, MB2, ["incoming connection failed remote=127\\.0\\.0\\.1:" ++ port(V)
                        ++ " error=the peer does not trust this node's certificate"]),
    %% Each failed attempt is logged once, by quic_dist with the node's name.
    ?assertEqual(0, count_lines(V, MV2, "outgoing connection failed")),
    ?assertNot(lists:member(NB, call(V, erlang, nodes, [connected]))).

%% M's certificate (CA1, CN=nosan) has no subjectAltName: M's TLS handshake with G succeeds
%% (a client certificate is not checked for names), then G refuses the node name M claims.
t_no_subject_alt_name(#{nodes := #{g := G, m := M}}) ->
    {NG, NM} = {?P:nodename(G), ?P:nodename(M)},
    {MG, MM} = {mark(G), mark(M)},
    refused_connect(M, NG),
    NoHost = "names no host \\(it has no subjectAltName extension; as in TLS, its CN is not "
        "taken for a host name\\), not 127\\.0\\.0\\.1",
    expect_log(G, MG, ["quic_dist refused 127\\.0\\.0\\.1:" ++ port(M) ++ " claiming to be "
                       ++ quote(NM) ++ ": its certificate \\(CN=nosan[^)]*\\) " ++ NoHost]),
    expect_log(M, MM, [told_refused(G, NG) ++ ": the certificate of " ++ quote(NM)
                       ++ " \\(CN=nosan[^)]*\\) " ++ NoHost]),
    %% M was told so at start, before any connection.
    _ = expect_log(M, 0, ["this node's certificate \\([^)]*nosan\\.pem\\) " ++ NoHost
                          ++ ", the host of its node name: other nodes refuse it"]).

t_wrong_host(#{nodes := #{v := V, w := W}} = Ctx) ->
    {NV, NW} = {?P:nodename(V), ?P:nodename(W)},
    %% V dials W: TLS checks that W's certificate names 127.0.0.1, the host part of NW.
    {MV, MW} = {mark(V), mark(W)},
    refused_connect(V, NW),
    expect_log(V, MV, [cannot_connect(NW, W) ++ " .*(NotValidForName|not valid for name)"]),
    expect_log(W, MW, ["incoming connection failed remote=127\\.0\\.0\\.1:" ++ port(V)]),
    %% W dials V: TLS succeeds (same CA), V checks the node name W claims in its first
    %% handshake message against W's certificate.
    {MV2, MW2} = {mark(V), mark(W)},
    refused_connect(W, NV),
    expect_log(V, MV2, ["quic_dist refused 127\\.0\\.0\\.1:" ++ port(W) ++ " claiming to be "
                        ++ quote(NW) ++ ": its certificate \\(CN=wronghost[^)]*\\) names .*"
                        "other\\.example"]),
    %% W is told why, as the reason of the connection's close.
    expect_log(W, MW2, [told_refused(V, NV) ++ ": the certificate of " ++ quote(NW)
                        ++ " \\(CN=wronghost[^)]*\\) names .*other\\.example.*, "
                        "not 127\\.0\\.0\\.1 \\(option verify_node_name\\)"]),
    %% W was told at start that its certificate does not name its own host; V, whose
    %% certificate does, was not.
    _ = expect_log(W, 0, ["this node's certificate \\([^)]*wronghost\\.pem\\) names "
                          ".*other\\.example.*, not 127\\.0\\.0\\.1, the host of its node "
                          "name: other nodes refuse it .*subjectAltName includes 127\\.0\\.0\\.1"]),
    ?assertEqual(nomatch, re:run(log_since(V, 0), "the host of its node name")),
    healthy(Ctx).

t_no_client_cert(#{nodes := #{v := V}} = Ctx) ->
    MV = mark(V),
    Out = probe_refused(Ctx, ["nocert", addr(V)], "error 116"),
    expect_log(V, MV, ["refused incoming connection remote=127\\.0\\.0\\.1:" ++ probe_port(Out)
                       ++ " .*peer sent no certificates"]),
    healthy(Ctx).

t_allowed_subjects(#{nodes := #{v := V, o := O}} = Ctx) ->
    {NV, NO} = {?P:nodename(V), ?P:nodename(O)},
    {MV, MO} = {mark(V), mark(O)},
    refused_connect(O, NV),
    expect_log(V, MV, ["quic_dist refused 127\\.0\\.0\\.1:" ++ port(O) ++ ": certificate subject "
                       "CN=outsider,O=quic_dist is not in allowed_subjects"]),
    Told = ": certificate subject CN=outsider,O=quic_dist is not in allowed_subjects",
    expect_log(O, MO, [told_refused(V, NV) ++ Told]),
    %% The other way round V refuses O's certificate as the connecting side, and tells O too.
    {MV2, MO2} = {mark(V), mark(O)},
    refused_connect(V, NO),
    expect_log(V, MV2, ["quic_dist refused 127\\.0\\.0\\.1:" ++ port(O) ++ ": certificate subject "
                        "CN=outsider,O=quic_dist is not in allowed_subjects"]),
    %% (O learns of it before the connection reaches its Erlang side: the transport logs it.)
    expect_log(O, MO2, ["quic_dist handshake failed: the peer refused this node "
                        "remote=127\\.0\\.0\\.1:" ++ port(V) ++ " reason=refused by "
                        ++ quote(NV) ++ Told]),
    healthy(Ctx).

t_wrong_cookie_cert_mode(#{nodes := #{v := V, k := K}} = Ctx) ->
    {NV, NK} = {?P:nodename(V), ?P:nodename(K)},
    Told = ": the challenge reply was made with another cookie \\(the two nodes' cookies "
           "differ\\)",
    {MV, MK} = {mark(V), mark(K)},
    refused_connect(K, NV),
    expect_log(V, MV, ["Connection attempt from node " ++ quote(NK)
                       ++ " rejected\\. Invalid challenge reply"]),
    %% The refused node is told why (over TCP it learns nothing).
    expect_log(K, MK, [told_refused(V, NV) ++ Told]),
    {MV2, MK2} = {mark(V), mark(K)},
    refused_connect(V, NK),
    expect_log(K, MK2, ["Connection attempt from node " ++ quote(NV)
                        ++ " rejected\\. Invalid challenge reply"]),
    expect_log(V, MV2, [told_refused(K, NK) ++ Told]),
    healthy(Ctx).

t_garbage(#{nodes := #{v := V}} = Ctx) ->
    MV = mark(V),
    Out = probe_refused(Ctx, ["garbage", addr(V), "5000"], "sent 5000 datagrams"),
    %% A third of the datagrams are well-formed QUIC Initial headers over junk: they reach
    %% packet decryption and are refused one by one.
    Lines = expect_log(V, MV, ["refused incoming connection remote=127\\.0\\.0\\.1:"
                               ++ probe_port(Out) ++ " .*authentication failed"]),
    ?assertMatch([_ | _], Lines),
    healthy(Ctx),
    show(V, [io_lib:format("~b lines 'refused incoming connection ... authentication failed' "
                           "for 5000 datagrams", [count_lines(V, MV, "authentication failed")])]).

t_wrong_alpn(#{nodes := #{v := V}} = Ctx) ->
    MV = mark(V),
    Out = probe_refused(Ctx, ["alpn", addr(V), "h3"], "error 120"),
    expect_log(V, MV, ["refused incoming connection remote=127\\.0\\.0\\.1:" ++ probe_port(Out)
                       ++ " .*error 120: peer doesn't support any known protocol"]),
    healthy(Ctx).

t_oversize_frame(#{nodes := #{v := V}, certs := C} = Ctx) ->
    %% Ten times: the connection dies while the acceptor is still handing it over, which once
    %% killed the acceptor (and left a second accept loop that dropped good connections).
    [begin
         MV = mark(V),
         Out = probe_refused(Ctx, frames_args(V, C, "oversize"),
                             "application error code 1 reason \"framing error\""),
         expect_log(V, MV, ["closing connection: peer broke the framing "
                            "remote=127\\.0\\.0\\.1:" ++ probe_port(Out)
                            %% 0xFFFFFFFF: the top bit marks an ordered frame, the rest
                            %% is its length.
                            ++ " error=frame of 2147483647 bytes exceeds the maximum"])
     end || _ <- lists:seq(1, 10)],
    healthy(Ctx).

t_malformed_handshake(#{nodes := #{v := V}, certs := C} = Ctx, Mode) ->
    MV = mark(V),
    Out = probe_refused(Ctx, frames_args(V, C, Mode), "closed by the server"),
    expect_log(V, MV, ["quic_dist refused 127\\.0\\.0\\.1:" ++ probe_port(Out)
                       ++ ": its first handshake message is not a valid node name message"]),
    %% Refused, not crashed: no process died with an error on V.
    ?assertEqual(nomatch, re:run(log_since(V, MV), "Error in process|CRASH REPORT")),
    healthy(Ctx).

frames_args(V, C, Mode) ->
    ["frames", addr(V), maps:get(good, C), maps:get(good_key, C), maps:get(ca1, C),
     "127.0.0.1", Mode].

%%% ------------------------------------------------------------------
%%% Encrypted keys and insecure
%%% ------------------------------------------------------------------

t_encrypted_keys(#{nodes := #{v := V, p1 := P1, p2 := P2}, certs := C} = Ctx) ->
    %% The key files really are encrypted.
    {ok, Legacy} = file:read_file(maps:get(legacy_key, C)),
    {ok, Pkcs8} = file:read_file(maps:get(pkcs8_key, C)),
    ?assertMatch({_, _}, binary:match(Legacy, <<"Proc-Type: 4,ENCRYPTED">>)),
    ?assertMatch({_, _}, binary:match(Pkcs8, <<"BEGIN ENCRYPTED PRIVATE KEY">>)),
    NV = ?P:nodename(V),
    [begin
         ?assertEqual(true, call(P, net_kernel, connect_node, [NV])),
         ?assertEqual(NV, call(P, rpc, call, [NV, erlang, node, []])),
         {ok, Info} = call(P, quic_dist, info, [NV]),
         ?assertMatch(#{mode := certificates, tls_version := <<"TLSv1.3">>}, Info)
     end || P <- [P1, P2]],
    %% And the other way: a node with an encrypted key accepts too.
    NP1 = ?P:nodename(P1),
    ?assertEqual(true, call(P2, net_kernel, connect_node, [NP1])),
    ?assertEqual(NP1, call(P2, rpc, call, [NP1, erlang, node, []])),
    healthy(Ctx).

t_key_in_certfile(#{nodes := #{v := V, c1 := C1}} = Ctx) ->
    {NV, NC1} = {?P:nodename(V), ?P:nodename(C1)},
    ?assertEqual(true, call(C1, net_kernel, connect_node, [NV])),
    ?assertEqual(NC1, call(V, rpc, call, [NC1, erlang, node, []])),
    ?assertMatch({ok, #{mode := certificates}}, call(C1, quic_dist, info, [NV])),
    true = call(C1, erlang, disconnect_node, [NV]),
    ok = call(V, ?P, wait_disconnected, [NC1, 10000]),
    ?assertEqual(true, call(V, net_kernel, connect_node, [NC1])),
    healthy(Ctx).

t_insecure(#{nodes := #{v := V, i1 := I1, i2 := I2}} = Ctx) ->
    Warning = "warning: quic_dist listening on udp .*INSECURE: peer certificates are NOT "
        "verified \\(option insecure\\)",
    expect_log(I1, 0, [Warning]),
    expect_log(I2, 0, [Warning]),
    %% I1 and I2 present certificates of a CA that neither trusts: they connect anyway.
    NI2 = ?P:nodename(I2),
    ?assertEqual(true, call(I1, net_kernel, connect_node, [NI2])),
    ?assertEqual(NI2, call(I1, rpc, call, [NI2, erlang, node, []])),
    {ok, Info} = call(I1, quic_dist, info, [NI2]),
    ?assertMatch(#{mode := insecure}, Info),
    %% A verifying node still refuses I1's certificate: insecure weakens only its own side.
    MV = mark(V),
    refused_connect(I1, ?P:nodename(V)),
    expect_log(V, MV, ["refused incoming connection remote=127\\.0\\.0\\.1:" ++ port(I1)
                       ++ " .*(UnknownIssuer|BadSignature)"]),
    healthy(Ctx).

%%% ------------------------------------------------------------------
%%% Cookie mode
%%% ------------------------------------------------------------------

t_cookie_mode_other_cookie(#{nodes := #{v := V, x := X}} = Ctx) ->
    {NV, NX} = {?P:nodename(V), ?P:nodename(X)},
    %% X dials V: X cannot verify V's certificate (signed by another derived CA, of the same
    %% name: rustls reports BadSignature) and aborts the handshake.
    {MV, MX} = {mark(V), mark(X)},
    refused_connect(X, NV),
    %% Both sides name the likely cause.
    expect_log(X, MX, [cannot_connect(NV, V) ++ " connection: this node does not trust the "
                       "peer's certificate .*(UnknownIssuer|BadSignature).*"
                       "cookie mode: the two nodes' cookies differ"]),
    expect_log(V, MV, ["incoming connection failed remote=127\\.0\\.0\\.1:" ++ port(X)
                       ++ " error=the peer does not trust this node's certificate "
                       ".*(UnknownIssuer|BadSignature).*the two nodes' cookies differ"]),
    %% V dials X: the same, the other way round.
    {MV2, MX2} = {mark(V), mark(X)},
    refused_connect(V, NX),
    expect_log(V, MV2, [cannot_connect(NX, X) ++ " .*(UnknownIssuer|BadSignature)"]),
    expect_log(X, MX2, ["incoming connection failed remote=127\\.0\\.0\\.1:" ++ port(V)]),
    %% No distribution handshake ever started: dist_util never saw the other node.
    ?assertEqual(nomatch, re:run(log_since(V, MV), "Connection attempt")),
    healthy(Ctx).

%%% ------------------------------------------------------------------
%%% Passive observer
%%% ------------------------------------------------------------------

t_passive_observer(#{nodes := #{a := A, b := B}, cookie := Cookie}) ->
    {NA, NB} = {?P:nodename(A), ?P:nodename(B)},
    NameB = hd(string:split(atom_to_list(NB), "@")),
    {Relay, RelayPort} = relay_start(list_to_integer(port(B))),
    ok = call(A, persistent_term, put, [{quic_dist_test_epmd, redirect}, {NameB, RelayPort}]),
    ?assertEqual(true, call(A, net_kernel, connect_node, [NB])),
    %% A really talks to B through the relay.
    {ok, Info} = call(A, quic_dist, info, [NB]),
    ?assertMatch(#{remote := {?LOOPBACK, RelayPort}}, Info),
    Payload = crypto:strong_rand_bytes(64),
    ?assertEqual(Payload, call(A, rpc, call, [NB, erlang, iolist_to_binary, [[Payload]]])),
    Capture = relay_stop(Relay),
    ToServer = [D || {to_server, D} <- Capture],
    ToClient = [D || {to_client, D} <- Capture],
    show(A, [io_lib:format("relay captured ~b datagrams to B (~b bytes), ~b to A (~b bytes)",
                           [length(ToServer), iolist_size(ToServer),
                            length(ToClient), iolist_size(ToClient)])]),
    ?assert(length(ToServer) >= 3),
    ?assert(length(ToClient) >= 3),
    Secrets = [{node_a, atom_to_binary(NA)}, {node_b, atom_to_binary(NB)},
               {name_a, list_to_binary(hd(string:split(atom_to_list(NA), "@")))},
               {name_b, list_to_binary(NameB)},
               {cookie, list_to_binary(Cookie)},
               {payload, Payload}],
    %% Neither in one datagram nor across datagram boundaries.
    Streams = [iolist_to_binary(ToServer), iolist_to_binary(ToClient) | ToServer ++ ToClient],
    Found = [What || {What, Secret} <- Secrets, S <- Streams,
                     binary:match(S, Secret) =/= nomatch],
    ?assertEqual([], lists:usort(Found)).

%% A UDP relay in the test process: datagrams from the client go to the target port, the
%% target's answers go back to the last client; every datagram is recorded.
relay_start(TargetPort) ->
    Parent = self(),
    Pid = spawn_link(
            fun() ->
                    {ok, S} = gen_udp:open(0, [binary, {ip, ?LOOPBACK}, {active, true},
                                               {recbuf, 4 bsl 20}, {sndbuf, 4 bsl 20}]),
                    {ok, Port} = inet:port(S),
                    Parent ! {self(), relay_port, Port},
                    relay_loop(S, TargetPort, undefined, [])
            end),
    receive {Pid, relay_port, Port} -> {Pid, Port}
    after 5000 -> error(relay_did_not_start)
    end.

relay_loop(S, TPort, Client, Acc) ->
    receive
        {udp, S, ?LOOPBACK, TPort, Data} ->
            case Client of
                {Ip, Port} -> ok = gen_udp:send(S, Ip, Port, Data);
                undefined -> ok
            end,
            relay_loop(S, TPort, Client, [{to_client, Data} | Acc]);
        {udp, S, Ip, Port, Data} ->
            ok = gen_udp:send(S, ?LOOPBACK, TPort, Data),
            relay_loop(S, TPort, {Ip, Port}, [{to_server, Data} | Acc]);
        {stop, From} ->
            gen_udp:close(S),
            From ! {self(), lists:reverse(Acc)}
    end.

relay_stop(Pid) ->
    Pid ! {stop, self()},
    receive {Pid, Capture} -> Capture
    after 5000 -> error(relay_did_not_stop)
    end.

%%% ------------------------------------------------------------------
%%% (c): the node under attack is fine
%%% ------------------------------------------------------------------

%% V is alive; the connection G -> V established at setup is the same one, saw no nodedown
%% and carries an rpc; N makes brand-new connections to V and an rpc through each.
healthy(#{nodes := Nodes, established := {From, To, Ctrl}}) ->
    G = maps:get(From, Nodes),
    V = maps:get(To, Nodes),
    N = maps:get(n, Nodes),
    NV = ?P:nodename(V),
    NN = ?P:nodename(N),
    ?assertEqual(NV, call(V, erlang, node, [])),
    ?assertEqual(Ctrl, dist_ctrl(G, NV)),
    ?assertEqual(NV, call(G, rpc, call, [NV, erlang, node, []])),
    ?assertEqual([], [E || {nodedown, _} = E <- call(G, ?P, events, [?WATCHER])]),
    %% Three new connections in a row: one lucky success would not show accepts that fail
    %% some of the time.
    [begin
         case lists:member(NV, call(N, erlang, nodes, [connected])) of
             true ->
                 true = call(N, erlang, disconnect_node, [NV]),
                 ok = call(V, ?P, wait_disconnected, [NN, 10000]);
             false ->
                 ok
         end,
         ?assertEqual(true, call(N, net_kernel, connect_node, [NV])),
         ?assertEqual(NV, call(N, rpc, call, [NV, erlang, node, []])),
         ?assertEqual(NN, call(V, rpc, call, [NN, erlang, node, []]))
     end || _ <- lists:seq(1, 3)],
    ok.

%% From's attempt to connect to To fails, and promptly: the refusing side closes the connection,
%% so the other side does not have to wait for its handshake timer (net_setuptime, 7 s).
refused_connect(From, To) ->
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual(false, call(From, net_kernel, connect_node, [To])),
    Ms = erlang:monotonic_time(millisecond) - T0,
    ?assert(Ms < 5000, {refused_only_after_ms, Ms}),
    ?assertNot(lists:member(To, call(From, erlang, nodes, [connected]))),
    Ms.

dist_ctrl(Peer, Node) ->
    case lists:keyfind(Node, 1, call(Peer, erlang, system_info, [dist_ctrl])) of
        {Node, Ctrl} -> Ctrl;
        false -> not_connected
    end.

%%% ------------------------------------------------------------------
%%% Logs
%%% ------------------------------------------------------------------

%% Everything the node logged so far (its handler flushed first).
read_log(#{log := File} = Peer) ->
    _ = catch ?P:call(Peer, logger_std_h, filesync, [default], 5000),
    case file:read_file(File) of
        {ok, Bin} -> Bin;
        {error, enoent} -> <<>>
    end.

mark(Peer) ->
    byte_size(read_log(Peer)).

log_since(Peer, Mark) ->
    Bin = read_log(Peer),
    binary:part(Bin, Mark, byte_size(Bin) - Mark).

%% Waits until each regular expression matches a line logged since Mark; returns the lines.
expect_log(Peer, Mark, Patterns) ->
    Deadline = erlang:monotonic_time(millisecond) + ?LOG_WAIT_MS,
    expect_log(Peer, Mark, Patterns, Deadline).

expect_log(Peer, Mark, Patterns, Deadline) ->
    Text = log_since(Peer, Mark),
    Found = [{P, first_line(Text, P)} || P <- Patterns],
    case [P || {P, nomatch} <- Found] of
        [] ->
            Lines = [L || {_, L} <- Found],
            show(Peer, Lines),
            Lines;
        Missing ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true ->
                    error({log_line_missing, ?P:nodename(Peer), Missing,
                           {logged_since_mark, Text}});
                false ->
                    timer:sleep(100),
                    expect_log(Peer, Mark, Patterns, Deadline)
            end
    end.

first_line(Text, Pattern) ->
    case re:run(Text, "[^\n]*(" ++ Pattern ++ ")[^\n]*", [{capture, first, binary}, unicode]) of
        {match, [Line]} -> Line;
        nomatch -> nomatch
    end.

%% The start of the warning of a node that Refuser (running as Peer) refused and told why.
told_refused(Peer, Refuser) ->
    "quic_dist handshake with 127\\.0\\.0\\.1:" ++ port(Peer) ++ " failed: refused by "
        ++ quote(Refuser).

%% The start of quic_dist's warning that this node could not connect to Node (running as Peer).
cannot_connect(Node, Peer) ->
    "quic_dist cannot connect to '" ++ atom_to_list(Node) ++ "' at 127\\.0\\.0\\.1:"
        ++ port(Peer) ++ ":".

count_lines(Peer, Mark, Pattern) ->
    length([L || L <- binary:split(log_since(Peer, Mark), <<"\n">>, [global]),
                 re:run(L, Pattern) =/= nomatch]).

show(Peer, Lines) ->
    case os:getenv("QUIC_DIST_TEST_SHOW_LOGS") of
        V when V =:= false; V =:= ""; V =:= "0" -> ok;
        _ ->
            [io:format(user, "~n      [~s] ~ts", [role_name(Peer), L]) || L <- Lines],
            ok
    end.

role_name(#{name := Name}) ->
    %% qdt_<role>_<ospid>_<n>
    case string:split(Name, "_", all) of
        ["qdt", Role | _] -> Role;
        _ -> Name
    end.

%%% ------------------------------------------------------------------
%%% Probe
%%% ------------------------------------------------------------------

%% The repository: QUIC_DIST_ROOT, else three levels above the carrier's ebin
%% (_build/quic_dist/ebin), else the current directory.
root() ->
    Ebin = carrier_ebin(),
    Candidates = [os:getenv("QUIC_DIST_ROOT", ""),
                  filename:dirname(filename:dirname(filename:dirname(Ebin))),
                  element(2, file:get_cwd())],
    case [D || D <- Candidates, D =/= "",
               filelib:is_file(filename:join([D, "crates", "quic_dist_transport",
                                              "Cargo.toml"]))] of
        [Root | _] -> Root;
        [] -> error({repository_not_found, Candidates})
    end.

%% The carrier's ebin from QUIC_DIST_ERL_FLAGS; also put on this VM's code path so that
%% certificates can be made here (quic_dist_certs, through the NIF).
carrier_ebin() ->
    Flags = ?P:erl_flags(),
    Ebin = pa_value(Flags),
    true = code:add_patha(Ebin),
    Ebin.

pa_value(["-pa", Dir | _]) -> Dir;
pa_value([_ | Rest]) -> pa_value(Rest);
pa_value([]) -> error(no_pa_in_quic_dist_erl_flags).

probe_path(Root) ->
    filename:join([Root, "target", "release", "examples", "quic_dist_probe"]).

%% Builds the probe once per run (cargo is quick when it is up to date).
build_probe(Root) ->
    case persistent_term:get({?MODULE, probe_built}, false) of
        true -> ok;
        false ->
            Cmd = "cd '" ++ Root ++ "' && PATH=\"$HOME/.cargo/bin:$PATH\" cargo build --release "
                "-p quic_dist_transport --example quic_dist_probe 2>&1; echo \"rc=$?\"",
            Out = os:cmd(Cmd),
            case lists:suffix("rc=0\n", Out) of
                true -> persistent_term:put({?MODULE, probe_built}, true), ok;
                false -> error({probe_build_failed, Out})
            end
    end.

%% Runs the probe; it must exit 0 (refused as expected) and its output contain Expect.
probe_refused(#{probe := Probe}, Args, Expect) ->
    Cmd = lists:flatten(["QUIC_DIST_PROBE_WAIT_MS=15000 timeout 40 '", Probe, "'",
                         [[" '", A, "'"] || A <- Args], " 2>&1; echo \"rc=$?\""]),
    Out = os:cmd(Cmd),
    case {lists:suffix("rc=0\n", Out), string:find(Out, Expect)} of
        {true, Found} when Found =/= nomatch -> ok;
        _ -> error({probe_did_not_see_a_refusal, Args, Expect, Out})
    end,
    show_probe(Out),
    Out.

show_probe(Out) ->
    case os:getenv("QUIC_DIST_TEST_SHOW_LOGS") of
        V when V =:= false; V =:= ""; V =:= "0" -> ok;
        _ -> io:format(user, "~n      [probe] ~ts", [string:trim(hd(string:split(Out, "rc=")))])
    end.

%% The probe's UDP port, from "local=0.0.0.0:PORT" in its output.
probe_port(Out) ->
    case re:run(Out, "local=[^ ]*:([0-9]+)", [{capture, all_but_first, list}]) of
        {match, [Port]} -> Port;
        nomatch -> error({no_local_port_in_probe_output, Out})
    end.

%%% ------------------------------------------------------------------
%%% Certificates
%%% ------------------------------------------------------------------

%% CA1 signs good, wronghost, nosan (no subjectAltName), outsider and expired; CA2 signs rogue and rogue2. Two copies of
%% good_key.pem encrypted with a password: legacy PEM (AES-128-CBC) and PKCS#8 (PBES2).
make_certs(Dir) ->
    D1 = filename:join(Dir, "ca1"),
    D2 = filename:join(Dir, "ca2"),
    Now = erlang:system_time(second),
    ok = quic_dist_certs:generate(D1, [{"good", ["127.0.0.1", "localhost"]},
                                       {"wronghost", ["other.example"]},
                                       {"nosan", []},
                                       {"outsider", ["127.0.0.1"]}]),
    ok = quic_dist_certs:generate(D1, [{"expired", ["127.0.0.1"]}],
                                  #{not_before => Now - 10 * 86400,
                                    not_after => Now - 86400}),
    ok = quic_dist_certs:generate(D1, [{"expiring", ["127.0.0.1"]}],
                                  #{not_before => Now - 86400, not_after => Now + 3600}),
    ok = quic_dist_certs:generate(D2, [{"rogue", ["127.0.0.1"]}, {"rogue2", ["127.0.0.1"]}]),
    Password = "qdt pass " ++ integer_to_list(erlang:unique_integer([positive])),
    GoodKey = filename:join(D1, "good_key.pem"),
    {Legacy, Pkcs8} = encrypt_key(GoodKey, Password, Dir),
    %% One file with the certificate and its key, as some tools write them.
    WithKey = filename:join(Dir, "good_with_key.pem"),
    {ok, GoodCert} = file:read_file(filename:join(D1, "good.pem")),
    {ok, GoodKeyPem} = file:read_file(GoodKey),
    ok = file:write_file(WithKey, [GoodCert, GoodKeyPem]),
    F = fun(D, B) -> filename:join(D, B ++ ".pem") end,
    K = fun(D, B) -> filename:join(D, B ++ "_key.pem") end,
    maps:from_list(
      [{ca1, F(D1, "ca")}, {ca2, F(D2, "ca")}, {password, Password}, {good_with_key, WithKey},
       {legacy_key, Legacy}, {pkcs8_key, Pkcs8}]
      ++ lists:append([[{list_to_atom(B), F(D1, B)}, {list_to_atom(B ++ "_key"), K(D1, B)}]
                       || B <- ["good", "wronghost", "nosan", "outsider", "expired",
                                "expiring"]])
      ++ lists:append([[{list_to_atom(B), F(D2, B)}, {list_to_atom(B ++ "_key"), K(D2, B)}]
                       || B <- ["rogue", "rogue2"]])).

cert_opts(C, Name, Ca) ->
    ["certfile", maps:get(Name, C),
     "keyfile", maps:get(list_to_atom(atom_to_list(Name) ++ "_key"), C),
     "cacertfile", maps:get(Ca, C)].

encrypt_key(KeyFile, Password, Dir) ->
    {ok, Pem} = file:read_file(KeyFile),
    [Entry] = public_key:pem_decode(Pem),
    Key = public_key:pem_entry_decode(Entry),           % #'ECPrivateKey'{}
    %% Legacy OpenSSL form: "EC PRIVATE KEY" with Proc-Type/DEK-Info headers.
    Legacy = public_key:pem_encode(
               [public_key:pem_entry_encode('ECPrivateKey', Key,
                                            {{"AES-128-CBC", crypto:strong_rand_bytes(16)},
                                             Password})]),
    %% PKCS#8 "ENCRYPTED PRIVATE KEY": PBES2, PBKDF2 with HMAC-SHA256, AES-256-CBC
    %% (what `openssl pkcs8 -topk8 -v2 aes-256-cbc' writes).
    Pbes2 = #'PBES2-params'{
               keyDerivationFunc =
                   #'PBES2-params_keyDerivationFunc'{
                      algorithm = ?'id-PBKDF2',
                      parameters =
                          #'PBKDF2-params'{
                             salt = {specified, crypto:strong_rand_bytes(16)},
                             iterationCount = 2048,
                             keyLength = asn1_NOVALUE,
                             prf = #'PBKDF2-params_prf'{algorithm = ?'id-hmacWithSHA256',
                                                        parameters = {asn1_OPENTYPE, <<5, 0>>}}}},
               encryptionScheme =
                   #'PBES2-params_encryptionScheme'{
                      algorithm = ?'id-aes256-CBC',
                      parameters = {asn1_OPENTYPE,
                                    <<4, 16, (crypto:strong_rand_bytes(16))/binary>>}}},
    Pkcs8 = public_key:pem_encode(
              [public_key:pem_entry_encode('PrivateKeyInfo', Key,
                                           {{"AES-256-CBC", Pbes2}, Password})]),
    LegacyFile = filename:join(Dir, "good_key_legacy_encrypted.pem"),
    Pkcs8File = filename:join(Dir, "good_key_pkcs8_encrypted.pem"),
    ok = file:write_file(LegacyFile, Legacy),
    ok = file:write_file(Pkcs8File, Pkcs8),
    {LegacyFile, Pkcs8File}.

%%% ------------------------------------------------------------------
%%% Helpers
%%% ------------------------------------------------------------------

call(Peer, M, F, A) ->
    ?P:call(Peer, M, F, A).

port(#{port := Port}) -> integer_to_list(Port).

addr(Peer) -> "127.0.0.1:" ++ port(Peer).

port_of(Peer) ->
    Name = hd(string:split(atom_to_list(?P:nodename(Peer)), "@")),
    {port, Port, _} = call(Peer, erl_epmd, port_please, [Name, ?LOOPBACK]),
    Port.

%% A node name as it appears in log lines (~p of an atom with @: quoted), regex-escaped.
quote(Node) ->
    "'?" ++ re_escape(atom_to_list(Node)) ++ "'?".

re_escape(S) ->
    lists:flatmap(fun(C) when C =:= $.; C =:= $@ -> [$\\, C];
                     (C) -> [C]
                  end, S).
