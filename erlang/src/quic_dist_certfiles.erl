%%% @doc Certificate mode follows the certificate files: renewed files are used without a
%%% restart.
%%%
%%% Certificates are often short-lived and renewed on disk by a tool (cert-manager, Vault,
%%% an ACME client). A node that read its files once would present the old certificate until it
%%% expires and then be refused everywhere. The node reads them again when the contents of its
%%% certfile, keyfile or cacertfile changed (a digest: modification times have a resolution of
%%% a second, and a renewed certificate often has the size of the old one):
%%%
%%% ```
%%%  setup (connecting process) ── follow(Ep) before connect ──┐
%%%  acceptor ── every ?CHECK_INTERVAL_MS: follow(Ep) ─────────┼─> endpoint_set_tls
%%%  quic_dist:reload_certificates/0 (the user) ── reload(Ep) ─┘
%%% '''
%%%
%%% Reading and digesting the three files takes about 140 µs here, 5% of a reconnect: follow/1
%%% looks at most once every ?MIN_INTERVAL_MS, so a burst of connections pays it once.
%%%
%%% Connections already up keep their TLS session, as with `inet_tls_dist'. Files that fail to
%%% load (half written, a key that does not match the certificate) leave the node with the
%%% material it has, with a warning; they are tried again when they change again.
%%%
%%% The node also says when its own certificate is expired, not yet valid, or close to expiry
%%% (less than 7 days or a fifth of its lifetime left): at start, after a reload, and when the
%%% acceptor's check finds it has changed state (check_validity/0), once per state.
-module(quic_dist_certfiles).

-export([track/1, tracking/0, follow/1, reload/1, forget/0, check_interval_ms/0,
         check_validity/0, check_own_name/1]).

-include_lib("kernel/include/logger.hrl").

%% {Stamps of the files the loaded material came from, Opts, LastLook}, in certificate mode
%% only. LastLook: an atomics array holding when follow/1 last looked (monotonic ms).
-define(KEY, {?MODULE, loaded_from}).
%% {Stamps, State}: the validity state last reported for the loaded files.
-define(REPORTED_KEY, {?MODULE, validity_reported}).
%% A certificate with less than this left (or a fifth of its lifetime) is close to expiry.
-define(EXPIRY_NOTICE_S, 7 * 86400).
%% How often the acceptor looks at the files (between outgoing connections, which look too).
-define(CHECK_INTERVAL_MS, 10000).
%% follow/1 looks at the files at most this often.
-define(MIN_INTERVAL_MS, 1000).

%% @doc Remembers the files of the node's certificate options (nothing in cookie mode).
-spec track(quic_dist_opts:opts()) -> ok.
track(Opts) ->
    case quic_dist_opts:mode(Opts) of
        certificates ->
            LastLook = atomics:new(1, []),
            %% The first follow/1 looks at once.
            atomics:put(LastLook, 1, erlang:monotonic_time(millisecond) - ?MIN_INTERVAL_MS),
            persistent_term:put(?KEY, {stamps(Opts), Opts, LastLook}),
            check_validity();
        cookie ->
            ok
    end.

%% @doc True in certificate mode (the files are worth looking at).
-spec tracking() -> boolean().
tracking() ->
    persistent_term:get(?KEY, undefined) =/= undefined.

%% @doc Loads the certificate files again if they changed since they were loaded (looking at
%% most once every ?MIN_INTERVAL_MS).
-spec follow(reference()) -> ok.
follow(Ep) ->
    case persistent_term:get(?KEY, undefined) of
        undefined ->
            ok;
        {Stamps, Opts, LastLook} ->
            case time_to_look(LastLook) of
                true ->
                    case stamps(Opts) of
                        Stamps -> ok;
                        Changed -> _ = load(Ep, Changed, Opts, LastLook), ok
                    end;
                false ->
                    ok
            end
    end.

%% True for one caller at most once every ?MIN_INTERVAL_MS.
time_to_look(LastLook) ->
    Now = erlang:monotonic_time(millisecond),
    Last = atomics:get(LastLook, 1),
    Now - Last >= ?MIN_INTERVAL_MS
        andalso atomics:compare_exchange(LastLook, 1, Last, Now) =:= ok.

%% @doc Loads the certificate files now, changed or not: `ok', or `{error, Reason}' (the node
%% keeps the material it has).
-spec reload(reference()) -> ok | {error, term()}.
reload(Ep) ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> {error, not_in_certificate_mode};
        {_Stamps, Opts, LastLook} -> load(Ep, stamps(Opts), Opts, LastLook)
    end.

%% @doc Forgets the files (the endpoint is closed).
-spec forget() -> ok.
forget() ->
    _ = persistent_term:erase(?KEY),
    _ = persistent_term:erase(?REPORTED_KEY),
    ok.

%% @doc Warns if the loaded certificate is expired, not yet valid or close to expiry, unless
%% that was already said for these files.
-spec check_validity() -> ok.
check_validity() ->
    case persistent_term:get(?KEY, undefined) of
        undefined ->
            ok;
        {Stamps, #{certfile := File}, _LastLook} ->
            State = validity_state(File, os:system_time(second)),
            case persistent_term:get(?REPORTED_KEY, undefined) of
                {Stamps, State} ->
                    ok;
                _ ->
                    persistent_term:put(?REPORTED_KEY, {Stamps, State}),
                    report_validity(File, State)
            end
    end.

%% @doc Warns if this node's certificate does not name Host, the host part of its node name:
%% a node that dials this one checks that name (TLS's server-name check), and a node this one
%% dials checks it too (`verify_node_name'), so both would refuse it. Nothing in cookie mode or
%% with `insecure'.
-spec check_own_name(string()) -> ok.
check_own_name(Host) ->
    case persistent_term:get(?KEY, undefined) of
        {_Stamps, #{certfile := File} = Opts, _LastLook} ->
            case {maps:get(insecure, Opts, false), first_certificate(File)} of
                {true, _} -> ok;
                {_, none} -> ok;  % the loader reports unreadable files
                {_, Der} -> check_names_host(File, Der, Host)
            end;
        undefined ->
            ok
    end.

check_names_host(File, Der, Host) ->
    case quic_dist_nif:cert_names_host(Der, unicode:characters_to_binary(Host)) of
        true ->
            ok;
        false ->
            Sans = maps:get(subject_alt_names, quic_dist_cert_info:summary(Der), []),
            warn("quic_dist: this node's certificate (~ts) names ~ts, not ~ts, the host of "
                 "its node name: other nodes refuse it (TLS checks that name when they dial "
                 "this node, verify_node_name when this node dials them); make a certificate "
                 "whose subjectAltName includes ~ts",
                 [File, quic_dist_identity:names(Sans), Host, Host])
    end.

%% @doc How often the acceptor calls follow/1, in milliseconds.
-spec check_interval_ms() -> pos_integer().
check_interval_ms() ->
    ?CHECK_INTERVAL_MS.

%% Stamps are kept even when loading fails: the same broken files are not tried (and logged)
%% again at every connection, only once they change.
load(Ep, Stamps, Opts, LastLook) ->
    persistent_term:put(?KEY, {Stamps, Opts, LastLook}),
    Result = try quic_dist_opts:tls(Opts, "") of
                 Tls -> quic_dist_nif:endpoint_set_tls(Ep, Tls)
             catch
                 error:Reason -> {error, Reason}
             end,
    case Result of
        ok ->
            ?LOG_NOTICE("quic_dist loaded its certificate files again (~ts): new connections "
                        "use them, connections already up keep theirs",
                        [maps:get(certfile, Opts)]),
            case dist_util:split_node(node()) of
                {node, _, Host} -> check_own_name(Host);
                _ -> ok
            end,
            check_validity();
        {error, Why} ->
            ?LOG_WARNING("quic_dist cannot load its changed certificate files (~ts): ~tp; it "
                         "keeps the certificate it has", [maps:get(certfile, Opts), Why])
    end,
    Result.

%% A digest of each file's contents (a few kilobytes each).
stamps(#{certfile := Cert} = Opts) ->
    Files = [Cert, maps:get(keyfile, Opts, Cert), maps:get(cacertfile, Opts, none)],
    [{File, stamp(File)} || File <- Files].

stamp(none) ->
    none;
stamp(File) ->
    case prim_file:read_file(File) of
        {ok, Bin} -> erlang:md5(Bin);
        {error, Reason} -> {error, Reason}
    end.

%% ok | {expired, NotAfter} | {not_yet_valid, NotBefore} | {expiring, NotAfter} |
%% unreadable (the loader reports that), for the first certificate in File at Now.
validity_state(File, Now) ->
    case first_certificate(File) of
        none ->
            unreadable;
        Der ->
            case quic_dist_cert_info:validity(Der) of
                {ok, {NotBefore, _}} when Now < NotBefore -> {not_yet_valid, NotBefore};
                {ok, {_, NotAfter}} when Now > NotAfter -> {expired, NotAfter};
                {ok, {NotBefore, NotAfter}} ->
                    Notice = min(?EXPIRY_NOTICE_S, (NotAfter - NotBefore) div 5),
                    case NotAfter - Now < Notice of
                        true -> {expiring, NotAfter};
                        false -> ok
                    end;
                {error, _} ->
                    unreadable
            end
    end.

%% The first certificate (DER) in a PEM file, or none.
first_certificate(File) ->
    Ders = case prim_file:read_file(File) of
               {ok, Pem} -> [Der || {'Certificate', Der, _} <- public_key:pem_decode(Pem)];
               {error, _} -> []
           end,
    case Ders of
        [Der | _] -> Der;
        [] -> none
    end.

report_validity(_File, ok) ->
    ok;
report_validity(_File, unreadable) ->
    ok;
report_validity(File, {expired, NotAfter}) ->
    warn("quic_dist: this node's certificate (~ts) expired at ~ts: peers refuse it; renew the "
         "files (the node loads them again without a restart)", [File, utc(NotAfter)]);
report_validity(File, {not_yet_valid, NotBefore}) ->
    warn("quic_dist: this node's certificate (~ts) is not valid before ~ts: peers refuse it "
         "until then (is the clock right?)", [File, utc(NotBefore)]);
report_validity(File, {expiring, NotAfter}) ->
    warn("quic_dist: this node's certificate (~ts) expires at ~ts; renew the files (the node "
         "loads them again without a restart)", [File, utc(NotAfter)]).

%% Through quic_dist_log: at start the boot-time handler would print it twice.
warn(Format, Args) ->
    quic_dist_log:log_when_ready(warning, Format, Args).

utc(Seconds) ->
    calendar:system_time_to_rfc3339(Seconds, [{unit, second}, {offset, "Z"}]).
