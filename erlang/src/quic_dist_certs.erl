%%% @doc Creates a cluster CA and node certificates (rcgen, through the NIF). Used by
%%% `make certs', the tests and the demo. Nothing generated here is meant to be committed.
-module(quic_dist_certs).

-export([generate/2, generate/3, main/1]).

-define(DAY, 86400).

%% @doc Creates `ca.pem' and `ca_key.pem' in Dir (unless present) and, for each
%% `{BaseName, Hosts}', `BaseName.pem' and `BaseName_key.pem', a certificate naming Hosts
%% (DNS names or IP addresses: the host part of the node names that use it).
-spec generate(file:filename(), [{string(), [string()]}]) -> ok | {error, term()}.
generate(Dir, Nodes) ->
    generate(Dir, Nodes, #{}).

%% @doc generate/2 with options: `days' (default 365), `not_before'/`not_after' (Unix seconds,
%% to make expired certificates in tests), `ca' (`{CertFile, KeyFile}' of an existing CA),
%% `intermediate' (a name: node certificates are then signed by an intermediate CA of that name,
%% written as NAME.pem/NAME_key.pem, and each node certificate file holds the chain: the node
%% certificate followed by the intermediate's; `ca.pem' stays the one to trust).
-spec generate(file:filename(), [{string(), [string()]}], map()) -> ok | {error, term()}.
generate(Dir, Nodes, Opts) ->
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    ok = quic_dist_nif:load(),
    Now = quic_dist_nif:unix_now(),
    NotBefore = maps:get(not_before, Opts, Now - 3600),
    NotAfter = maps:get(not_after, Opts, Now + maps:get(days, Opts, 365) * ?DAY),
    {CaCertFile, CaKeyFile} = maps:get(ca, Opts, {filename:join(Dir, "ca.pem"),
                                                  filename:join(Dir, "ca_key.pem")}),
    case ensure_ca(CaCertFile, CaKeyFile, Now) of
        {ok, RootCert, RootKey} ->
            case signer(Dir, RootCert, RootKey, Opts, NotBefore, NotAfter) of
                {ok, {CaCert, CaKey, Chain}} ->
                    lists:foldl(
                      fun(_, {error, _} = E) -> E;
                         ({Base, Hosts}, ok) ->
                              Names = [unicode:characters_to_binary(H) || H <- Hosts],
                              case quic_dist_nif:gen_node_cert(
                                     CaCert, CaKey, unicode:characters_to_binary(Base),
                                     Names, NotBefore, NotAfter) of
                                  {ok, {Cert, Key}} ->
                                      write(filename:join(Dir, Base ++ ".pem"),
                                            [Cert | Chain], 8#644),
                                      write(filename:join(Dir, Base ++ "_key.pem"), Key, 8#600);
                                  {error, _} = E -> E
                              end
                      end, ok, Nodes);
                Error ->
                    Error
            end;
        Error ->
            Error
    end.

%% Who signs node certificates: the root, or a new intermediate CA whose certificate then
%% follows each node certificate in its file.
signer(Dir, RootCert, RootKey, #{intermediate := Name}, NotBefore, NotAfter) ->
    case quic_dist_nif:gen_intermediate(RootCert, RootKey, unicode:characters_to_binary(Name),
                                        NotBefore, NotAfter) of
        {ok, {Cert, Key}} ->
            write(filename:join(Dir, Name ++ ".pem"), Cert, 8#644),
            write(filename:join(Dir, Name ++ "_key.pem"), Key, 8#600),
            {ok, {Cert, Key, [Cert]}};
        Error ->
            Error
    end;
signer(_Dir, RootCert, RootKey, _Opts, _NotBefore, _NotAfter) ->
    {ok, {RootCert, RootKey, []}}.

%% @doc Command line: `Dir Base Host1,Host2 [Base Hosts ...]'; with no node given, one
%% certificate `node' for this machine (localhost, 127.0.0.1, ::1 and the host names).
-spec main([string()]) -> no_return().
main([Dir]) ->
    main([Dir, "node", string:join(local_hosts(), ",")]);
main([Dir | Pairs]) ->
    Nodes = pairs(Pairs),
    case generate(Dir, Nodes) of
        ok ->
            io:format("certificates written to ~ts: ca.pem~ts~n",
                      [Dir, [[", ", B, ".pem"] || {B, _} <- Nodes]]),
            halt(0);
        {error, Reason} ->
            io:format(standard_error, "cannot create certificates: ~ts~n", [Reason]),
            halt(1)
    end.

pairs([Base, Hosts | Rest]) -> [{Base, string:lexemes(Hosts, ",")} | pairs(Rest)];
pairs([]) -> [].

local_hosts() ->
    {ok, Short} = inet:gethostname(),
    Long = case inet:gethostbyname(Short) of
               {ok, {hostent, Name, _, _, _, _}} -> [Name];
               _ -> []
           end,
    lists:usort(["localhost", "127.0.0.1", "::1", Short | Long]).

ensure_ca(CertFile, KeyFile, Now) ->
    case {file:read_file(CertFile), file:read_file(KeyFile)} of
        {{ok, Cert}, {ok, Key}} ->
            {ok, Cert, Key};
        _ ->
            case quic_dist_nif:gen_ca(<<"quic_dist cluster CA">>, Now - 3600,
                                      Now + 10 * 365 * ?DAY) of
                {ok, {Cert, Key}} ->
                    write(CertFile, Cert, 8#644),
                    write(KeyFile, Key, 8#600),
                    {ok, Cert, Key};
                Error ->
                    Error
            end
    end.

write(File, Data, Mode) ->
    ok = file:write_file(File, Data),
    ok = file:change_mode(File, Mode).
