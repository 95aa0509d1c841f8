%%% @doc quic_dist options, from (later wins) the `quic_dist' application environment
%%% (sys.config), `-quic_dist_optfile File' and `-quic_dist_opt Key Value ...'.
%%%
%%% Read during boot, before the file server runs: files are read with prim_file.
-module(quic_dist_opts).

-export([get/0, tls/1, transport/1, describe_mode/1, parse_pairs/1]).

-define(KEYS, [certfile, keyfile, cacertfile, port, ip, threads, log_filter,
               idle_timeout_ms, handshake_timeout_ms, max_frame,
               stream_window, connection_window]).

-type opts() :: #{atom() => term()}.
-export_type([opts/0]).

%% @doc All options, merged.
-spec get() -> opts().
get() ->
    lists:foldl(fun maps:merge/2, #{}, [app_env(), optfile(), command_line()]).

%% @doc The TLS part, as the NIF takes it.
-spec tls(opts()) -> map().
tls(Opts) ->
    maps:from_list([{K, unicode:characters_to_binary(V)}
                    || K <- [certfile, keyfile, cacertfile],
                       V <- [maps:get(K, Opts, undefined)], V =/= undefined]).

%% @doc The transport part, as the NIF takes it.
-spec transport(opts()) -> map().
transport(Opts) ->
    maps:with([idle_timeout_ms, handshake_timeout_ms, max_frame, stream_window,
               connection_window], Opts).

%% @doc One line saying where the node's TLS identity comes from.
-spec describe_mode(opts()) -> iolist().
describe_mode(#{certfile := C, cacertfile := A}) ->
    io_lib:format("certificates: ~ts, trusted ca: ~ts", [C, A]);
describe_mode(_) ->
    "no certificates configured".

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
    maps:from_list([{K, V} || K <- ?KEYS, {ok, V} <- [application:get_env(quic_dist, K)]]).

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
        {more, _} -> {ok, lists:reverse(Acc)};
        {done, {error, Info, _}, _} -> {error, Info}
    end.

%%% Conversions of command-line strings

convert(Key, V) when Key =:= port; Key =:= threads; Key =:= idle_timeout_ms;
                     Key =:= handshake_timeout_ms; Key =:= max_frame;
                     Key =:= stream_window; Key =:= connection_window ->
    list_to_integer(V);
convert(ip, V) ->
    {ok, Ip} = inet:parse_address(V),
    Ip;
convert(_Key, V) ->
    V.
