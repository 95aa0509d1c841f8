%%% @doc Node identity: is the peer's certificate allowed to speak for the node it claims to be?
%%%
%%% The connecting side gets this from TLS itself: the server name it verifies is the host part
%%% of the node name it dials. The accepting side learns the peer's node name only from the
%%% first distribution handshake message, so it checks it here, before the cookie challenge:
%%% the certificate must name the host part of the claimed node name (DNS or IP SAN).
%%% An optional allow-list of certificate subjects applies on both sides.
%%%
%%% A refusal is logged here and also told to the peer, as the reason of the QUIC connection's
%%% close ("refused by NODE: ...", the transport's REFUSAL_PREFIX), so that the refused node can
%%% say why in its own log (a warning) instead of only failing to connect.
-module(quic_dist_identity).

-export([check_claimed_name/3, check_subject/2, handshake_node_name/1, peer_refusal/1,
         refusal/1, names/1]).

-define(REFUSED_BY, "refused by ").

-include_lib("kernel/include/logger.hrl").

%% @doc Accepting side: checks the node name in the peer's first handshake message against the
%% peer certificate (by TLS's server-name rules, in the NIF: webpki). `ok' or `{error, Reason}'
%% (logged).
-spec check_claimed_name(term(), [byte()], quic_dist_opts:opts()) -> ok | {error, term()}.
check_claimed_name(Conn, NameMessage, Opts) ->
    Enabled = maps:get(verify_node_name, Opts, true) =:= true
        andalso maps:get(insecure, Opts, false) =/= true,
    case {Enabled, handshake_node_name(NameMessage)} of
        {_, error} ->
            %% Not a (complete) name message: dist_util would refuse it without a word, or crash
            %% on a name length that lies (badarg in lists:split/2). Refuse it here, visibly.
            ?LOG_WARNING("quic_dist refused ~s: its first handshake message is not a valid "
                         "node name message (~b bytes, first byte ~p)",
                         [peer(quic_dist_nif:conn_info(Conn)), length(NameMessage),
                          hd(NameMessage ++ [none])]),
            tell_peer(Conn, "the first handshake message is not a valid node name message"),
            {error, bad_name_message};
        {false, _} -> ok;
        {true, {ok, Node}} -> check_node(Conn, Node)
    end.

%% @doc Both sides: the peer certificate's subject must be in `allowed_subjects' if set.
-spec check_subject(term(), quic_dist_opts:opts()) -> ok | {error, term()}.
check_subject(Conn, #{allowed_subjects := Allowed}) when is_list(Allowed), Allowed =/= [] ->
    ConnInfo = quic_dist_nif:conn_info(Conn),
    #{subject := Subject} = Summary = leaf_summary(ConnInfo),
    Cn = common_name(Subject),
    Wanted = [unicode:characters_to_binary(A) || A <- Allowed],
    case lists:member(Subject, Wanted) orelse lists:member(Cn, Wanted) of
        true -> ok;
        false ->
            ?LOG_WARNING("quic_dist refused ~s: certificate subject ~ts is not in "
                         "allowed_subjects", [peer(ConnInfo), maps:get(subject, Summary)],
                         #{}),
            tell_peer(Conn, io_lib:format("certificate subject ~ts is not in allowed_subjects",
                                          [Subject])),
            {error, {subject_not_allowed, Subject}}
    end;
check_subject(_Conn, _Opts) ->
    ok.

%% @doc The node name in a handshake name message (`N' of OTP 23+ or the older `n').
-spec handshake_node_name([byte()]) -> {ok, binary()} | error.
handshake_node_name([$N | Rest]) ->
    case list_to_binary(Rest) of
        <<_Flags:64, _Creation:32, Len:16, Name:Len/binary, _/binary>> -> {ok, Name};
        _ -> error
    end;
handshake_node_name([$n | Rest]) ->
    case list_to_binary(Rest) of
        <<_Version:16, _Flags:32, Name/binary>> -> {ok, Name};
        _ -> error
    end;
handshake_node_name(_) ->
    error.

%% @doc The refusal a peer sent as its close reason (`quic_dist_closed' during the handshake):
%% `{refused, Text}', Text naming the refusing node and why, or `other'.
-spec peer_refusal(binary() | string()) -> {refused, binary()} | other.
peer_refusal(Reason) ->
    case unicode:characters_to_binary(Reason) of
        <<"closed by peer: ", ?REFUSED_BY, _/binary>> = Closed ->
            <<"closed by peer: ", Text/binary>> = Closed,
            %% The peer's words go into this node's log: one line, no control characters.
            {refused, << <<(printable(C))/utf8>> || <<C/utf8>> <= Text >>};
        _ ->
            other
    end.

%% @doc The close reason that tells a peer this node refused it, and why (Text).
-spec refusal(unicode:chardata()) -> binary().
refusal(Text) ->
    unicode:characters_to_binary([?REFUSED_BY, atom_to_list(node()), ": ", Text]).

%%% Internal

check_node(Conn, Node) ->
    case binary:split(Node, <<"@">>) of
        [_Name, Host] ->
            case quic_dist_nif:conn_peer_names(Conn, Host) of
                true -> ok;
                false ->
                    ConnInfo = quic_dist_nif:conn_info(Conn),
                    #{subject_alt_names := Sans} = Summary = leaf_summary(ConnInfo),
                    ?LOG_WARNING("quic_dist refused ~s claiming to be ~ts: its certificate (~ts) "
                                 "names ~ts, not ~ts (option verify_node_name)",
                                 [peer(ConnInfo), Node, maps:get(subject, Summary),
                                  names(Sans), Host]),
                    tell_peer(Conn, io_lib:format("the certificate of ~ts (~ts) names ~ts, not "
                                                  "~ts (option verify_node_name)",
                                                  [Node, maps:get(subject, Summary), names(Sans),
                                                   Host])),
                    {error, {node_name_not_in_certificate, Node}}
            end;
        _ ->
            ?LOG_WARNING("quic_dist refused ~s: the node name it claims, ~ts, has no host part",
                         [peer(quic_dist_nif:conn_info(Conn)), Node]),
            tell_peer(Conn, io_lib:format("the node name ~ts has no host part", [Node])),
            {error, {bad_node_name, Node}}
    end.

%% @doc What a certificate names (its subjectAltNames, from quic_dist_cert_info), as log text
%% for a refusal or a warning. Without subjectAltName it names nothing, whatever its CN says:
%% a CN-only certificate (as `openssl req -subj /CN=host' makes) is the usual case.
-spec names(list()) -> iolist() | string().
names([]) ->
    "no host (it has no subjectAltName extension; as in TLS, its CN is not taken for a host "
        "name)";
names(Sans) ->
    io_lib:format("~p", [Sans]).

%% Closes the connection with the refusal as its reason: what the peer's log will show.
tell_peer(Conn, Text) ->
    quic_dist_nif:conn_shutdown(Conn, refusal(Text)).

printable(C) when C < 32; C =:= 127 -> $\s;
printable(C) -> C.

leaf_summary(#{peer_certificates := [Leaf | _]}) ->
    quic_dist_cert_info:summary(Leaf);
leaf_summary(_) ->
    #{subject => <<>>, subject_alt_names => []}.

common_name(Subject) ->
    case [V || <<"CN=", V/binary>> <- binary:split(Subject, <<",">>, [global])] of
        [Cn | _] -> Cn;
        [] -> undefined
    end.

peer(#{remote := {Ip, Port}}) -> io_lib:format("~s:~b", [inet:ntoa(Ip), Port]);
peer(_) -> "peer".
