%%% @doc quic_dist options, from (later wins) the `quic_dist' application environment
%%% (sys.config), `-quic_dist_optfile File' and `-quic_dist_opt Key Value ...'.
%%%
%%% Read during boot, before the file server runs: files are read with prim_file.
-module(quic_dist_opts).

-export([get/0, tls/2, transport/1, streams/1, mailbox_limit/1, poll_us/1, mode/1,
         describe_mode/1, parse_pairs/1]).

-define(KEYS, [certfile, keyfile, cacertfile, password, verify_node_name, allowed_subjects,
               insecure, port, ip, log_filter,
               idle_timeout_ms, handshake_timeout_ms, max_frame,
               stream_window, connection_window, mixed_window, streams, mailbox_limit,
               congestion, poll_us]).

%% Data streams per direction unless the `streams' option says otherwise (see the README).
-define(DEFAULT_STREAMS, 8).
-define(U32, 4294967295).

-type opts() :: #{atom() => term()}.
-export_type([opts/0]).

%% @doc All options, merged. An option this carrier does not know is an error: a misspelt
%% `certfile' must not leave the node running in cookie mode without a word.
-spec get() -> opts().
get() ->
    Opts = lists:foldl(fun maps:merge/2, #{}, [app_env(), optfile(), command_line()]),
    case [K || K <- maps:keys(Opts), not lists:member(K, ?KEYS)] of
        [] -> ok;
        Unknown -> error({unknown_quic_dist_options, Unknown, {known, ?KEYS}})
    end,
    %% The same for the switches from sys.config or an optfile as from the command line.
    _ = [bad_option(K, V, "true or false")
         || K <- [verify_node_name, insecure], V <- [maps:get(K, Opts, false)],
            not is_boolean(V)],
    maps:foreach(fun check_range/2, maps:with([port], Opts)),
    Opts.

%% @doc The TLS part, as the NIF takes it, for a node whose host name is Host.
%%
%% With `certfile': the files (an encrypted key is decrypted here with public_key and
%% passed in memory). Without: cookie mode, a CA derived from the cookie and a leaf certificate
%% naming Host and the loopback names.
-spec tls(opts(), string()) -> map().
tls(Opts, Host) ->
    Base = case mode(Opts) of
               certificates -> certificate_files(Opts);
               cookie -> cookie_identity(Host)
           end,
    Base#{insecure => maps:get(insecure, Opts, false) =:= true}.

%% @doc `certificates' when certificate files are configured, else `cookie'.
-spec mode(opts()) -> certificates | cookie.
mode(#{certfile := _}) -> certificates;
mode(_) -> cookie.

certificate_files(#{certfile := Cert} = Opts) ->
    %% keyfile defaults to certfile: one PEM file with the certificate and its key.
    KeyFile = maps:get(keyfile, Opts, Cert),
    Ca = case Opts of
             #{cacertfile := C} -> C;
             _ -> error({quic_dist_option_missing, cacertfile})
         end,
    case Opts of
        #{password := Password} ->
            #{cert_pem => read(Cert),
              key_pem => decrypt_key(read(KeyFile), Password, KeyFile),
              ca_pem => read(Ca)};
        _ ->
            %% An encrypted key would only get a PEM parse error from the NIF: say what is
            %% missing.
            case binary:match(read(KeyFile), <<"ENCRYPTED">>) of
                nomatch -> ok;
                _ -> error({quic_dist_option_missing, password, {encrypted_keyfile, KeyFile}})
            end,
            maps:map(fun(_, File) -> unicode:characters_to_binary(File) end,
                     #{certfile => Cert, keyfile => KeyFile, cacertfile => Ca})
    end.

cookie_identity(Host) ->
    Names = lists:usort([Host, "localhost", "127.0.0.1", "::1"]),
    #{cookie => atom_to_binary(erlang:get_cookie(), utf8),
      names => [unicode:characters_to_binary(N) || N <- Names],
      common_name => unicode:characters_to_binary(Host)}.

read(File) ->
    case prim_file:read_file(File) of
        {ok, Bin} -> Bin;
        {error, Reason} -> error({cannot_read, File, Reason})
    end.

%% An encrypted PEM private key, decrypted with Password and re-encoded unencrypted,
%% to be handed to the NIF in memory only.
decrypt_key(Pem, Password, File) ->
    Pass = unicode:characters_to_list(Password),
    case [E || {T, _, _} = E <- public_key:pem_decode(Pem),
               lists:member(T, ['PrivateKeyInfo', 'RSAPrivateKey', 'ECPrivateKey'])] of
        [Entry | _] ->
            %% A wrong password shows up as an ASN.1 decoding error deep in public_key.
            Key = try public_key:pem_entry_decode(Entry, Pass)
                  catch _:_ -> error({cannot_decrypt_keyfile, File, "wrong password?"})
                  end,
            public_key:pem_encode([public_key:pem_entry_encode(element(1, Entry), Key)]);
        [] ->
            error({no_private_key_in_keyfile, File})
    end.

%% @doc The transport part, as the NIF takes it.
-spec transport(opts()) -> map().
transport(Opts) ->
    Numbers = maps:with([idle_timeout_ms, handshake_timeout_ms, max_frame, stream_window,
                         connection_window, mixed_window], Opts),
    maps:foreach(fun check_range/2, Numbers),
    Numbers#{streams => streams(Opts), congestion => congestion(Opts)}.

%% A numeric transport option outside what a node works with is an error at start. Outside
%% these ranges every connection fails or stalls: a window of 0 lets no data through, a
%% handshake timeout of 0 lets no handshake finish, a frame limit below OTP's 64 KiB
%% fragments refuses large messages; an idle timeout under a second would ping a quiet peer
%% several times a second.
check_range(Key, Value) ->
    {Allowed, Expected} = range(Key),
    case is_integer(Value) andalso Allowed(Value) of
        true -> ok;
        false -> bad_option(Key, Value, Expected)
    end.

%% The NIF takes a 16-bit port: 70000 would quietly become 4464.
range(port) ->
    {fun(V) -> in(V, 0, 65535) end, "an integer from 0 to 65535"};
range(idle_timeout_ms) ->
    {fun(V) -> V =:= 0 orelse in(V, 1000, ?U32) end,
     "0 (none) or an integer from 1000 to 4294967295 (milliseconds)"};
range(handshake_timeout_ms) ->
    {fun(V) -> in(V, 1000, ?U32) end, "an integer from 1000 to 4294967295 (milliseconds)"};
range(max_frame) ->
    {fun(V) -> in(V, 1048576, ?U32) end, "an integer from 1048576 to 4294967295 (bytes)"};
range(Window) when Window =:= stream_window; Window =:= connection_window ->
    {fun(V) -> in(V, 65536, ?U32) end, "an integer from 65536 to 4294967295 (bytes)"};
range(mixed_window) ->
    {fun(V) -> in(V, 0, ?U32) end, "an integer from 0 (never narrow) to 4294967295 (bytes)"}.

in(V, Min, Max) -> V >= Min andalso V =< Max.

%% @doc The congestion controller: cubic (the default), bbr or new_reno.
-spec congestion(opts()) -> bbr | cubic | new_reno.
congestion(Opts) ->
    case maps:get(congestion, Opts, cubic) of
        C when C =:= bbr; C =:= cubic; C =:= new_reno -> C;
        Other -> bad_option(congestion, Other, "cubic, bbr or new_reno")
    end.

%% @doc Bytes a local process may have waiting from one peer before its stream pauses.
-spec mailbox_limit(opts()) -> non_neg_integer().
mailbox_limit(Opts) ->
    case maps:get(mailbox_limit, Opts, 64 * 1024 * 1024) of
        N when is_integer(N), N >= 0 -> N;
        Other -> bad_option(mailbox_limit, Other, "a non-negative integer (bytes)")
    end.

%% @doc How long the node's poller reads the socket after a datagram, µs (0: never).
-spec poll_us(opts()) -> non_neg_integer().
poll_us(Opts) ->
    case maps:get(poll_us, Opts, 100) of
        N when is_integer(N), N >= 0 -> N;
        Other -> bad_option(poll_us, Other, "a non-negative integer (microseconds)")
    end.

%% @doc Data streams to send on: 1 keeps one ordered stream and the atom cache; more spread
%% independent sender processes over streams (no head-of-line blocking between them).
-spec streams(opts()) -> 1..64.
streams(Opts) ->
    case maps:get(streams, Opts, ?DEFAULT_STREAMS) of
        N when is_integer(N), N >= 1, N =< 64 -> N;
        Other -> bad_option(streams, Other, "an integer from 1 to 64")
    end.

%% @doc One line saying where the node's TLS identity comes from.
-spec describe_mode(opts()) -> iolist().
describe_mode(#{insecure := true} = Opts) ->
    ["INSECURE: peer certificates are NOT verified (option insecure); ",
     describe_mode(maps:remove(insecure, Opts))];
describe_mode(#{certfile := C} = Opts) ->
    io_lib:format("mode certificates: ~ts, trusted ca: ~ts, node names verified: ~p",
                  [C, maps:get(cacertfile, Opts, "none"),
                   maps:get(verify_node_name, Opts, true)]);
describe_mode(_) ->
    "mode cookie: trust derived from the cookie (development; as strong as the cookie; "
        "use certificates in production)".

%% @doc Options from `Key Value' string pairs, as given to -quic_dist_opt.
-spec parse_pairs([string()]) -> opts().
parse_pairs([K, V | Rest]) ->
    Key = list_to_atom(K),
    maps:put(Key, convert(Key, V), parse_pairs(Rest));
parse_pairs([K]) ->
    error({missing_value, K});
parse_pairs([]) ->
    #{}.

%%% Sources

app_env() ->
    %% Outside a release nothing loads the application, and `erl -config F' keeps the
    %% environment of unloaded applications out of reach: load it (the .app is on the path).
    _ = application:load(quic_dist),
    maps:from_list(application:get_all_env(quic_dist)).

command_line() ->
    case init:get_argument(quic_dist_opt) of
        {ok, Lists} -> parse_pairs(lists:append(Lists));
        error -> #{}
    end.

optfile() ->
    case init:get_argument(quic_dist_optfile) of
        {ok, [[File] | _]} ->
            case consult(File) of
                {ok, Terms} -> from_terms(lists:flatten(Terms));
                {error, Reason} -> error({bad_quic_dist_optfile, File, Reason})
            end;
        _ ->
            #{}
    end.

%% `[{server, Opts}, {client, Opts}]' (inet_tls_dist style) or a flat list: one node has one
%% identity here, so both sides merge into one map.
from_terms(Terms) ->
    lists:foldl(fun({Side, Opts}, Acc) when Side =:= server; Side =:= client ->
                        maps:merge(Acc, from_terms(Opts));
                   ({K, V}, Acc) when is_atom(K) ->
                        maps:put(K, V, Acc)
                end, #{}, Terms).

consult(File) ->
    case prim_file:read_file(File) of
        {ok, Bin} -> parse_terms(unicode:characters_to_list(Bin), []);
        Error -> Error
    end.

parse_terms(String, Acc) ->
    case erl_scan:tokens([], String, 1) of
        {done, {ok, Tokens, _}, Rest} ->
            case erl_parse:parse_term(Tokens) of
                {ok, Term} -> parse_terms(Rest, [Term | Acc]);
                Error -> Error
            end;
        {done, {eof, _}, _} -> {ok, lists:reverse(Acc)};
        {more, Cont} ->
            %% Only blanks or comments may follow the last full stop.
            case erl_scan:tokens(Cont, eof, 1) of
                {done, {eof, _}, _} -> {ok, lists:reverse(Acc)};
                _ -> {error, "the last term does not end with a full stop"}
            end;
        {done, {error, Info, _}, _} -> {error, Info}
    end.

%%% Conversions of command-line strings

convert(Key, V) when Key =:= port; Key =:= idle_timeout_ms;
                     Key =:= handshake_timeout_ms; Key =:= max_frame;
                     Key =:= stream_window; Key =:= connection_window; Key =:= streams;
                     Key =:= mixed_window; Key =:= poll_us;
                     Key =:= mailbox_limit ->
    try list_to_integer(V)
    catch error:badarg -> bad_option(Key, V, "an integer")
    end;
convert(ip, V) ->
    case inet:parse_address(V) of
        {ok, Ip} -> Ip;
        {error, _} -> bad_option(ip, V, "an IPv4 or IPv6 address")
    end;
convert(congestion, V) ->
    list_to_atom(V);
convert(Key, V) when Key =:= verify_node_name; Key =:= insecure ->
    %% Only the two words: "yes" must not quietly mean false (verification off).
    case V of
        "true" -> true;
        "false" -> false;
        _ -> bad_option(Key, V, "true or false")
    end;
convert(allowed_subjects, V) ->
    string:lexemes(V, ";");
convert(_Key, V) ->
    V.

bad_option(Key, Value, Expected) ->
    error({bad_option, Key, Value, Expected}).
