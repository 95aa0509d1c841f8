%%% @doc Cookie mode follows the node's cookie, as TCP distribution does.
%%%
%%% In cookie mode (no certificate options) a node's TLS identity and trust derive from its
%%% cookie (quic_dist_opts:tls/2, cookie_trust.rs). TCP distribution reads the cookie at every
%%% handshake, so `erlang:set_cookie/1' after the node has started (`Node.set_cookie/1' in
%%% Elixir: scripts, test set-ups, a node started with `net_kernel:start/2') applies to the
%%% next connection. Here the material is derived again when the cookie has changed:
%%%
%%% ```
%%%  setup (connecting process) ── follow(Ep) before connect ──┐
%%%  acceptor ── quic_dist_held from the NIF: follow(Ep) ──────┴─> endpoint_set_tls (dirty
%%%      then endpoint_admit(Ep)                                   scheduler, ~30 ms, only
%%%      (new connections wait in the NIF before their TLS         when the cookie changed)
%%%       handshake until the acceptor has looked)
%%% '''
%%%
%%% Established connections keep the TLS session they have, as TCP connections keep their
%%% handshake. A cookie set for one node (`erlang:set_cookie/2', as tools that attach to a
%%% running node do) is used to connect to that node: the connection gets TLS material derived from it
%%% (client_for/2, one derivation per cookie, kept until the endpoint closes). An incoming
%%% connection is verified against this node's own cookie: the peer's name is not known before
%%% TLS.
-module(quic_dist_cookie).

-export([track/2, tracking/0, follow/1, forget/0, client_for/2]).

-include_lib("kernel/include/logger.hrl").

%% {Cookie the endpoint's material derives from (binary), Host it names, Opts}, in cookie
%% mode only.
-define(KEY, {?MODULE, derived_from}).
%% #{Cookie => client material} for the cookies erlang:set_cookie/2 gave other nodes.
-define(CLIENTS_KEY, {?MODULE, per_node_clients}).

%% @doc Remembers what the cookie-mode material Tls (endpoint_open/5's map) derives from;
%% nothing in certificate mode.
-spec track(map(), quic_dist_opts:opts()) -> ok.
track(#{cookie := Cookie, common_name := Host}, Opts) ->
    persistent_term:put(?KEY, {Cookie, unicode:characters_to_list(Host), Opts});
track(_CertificateMaterial, _Opts) ->
    ok.

%% @doc True if the node's material derives from its cookie (incoming connections must then
%% wait for follow/1).
-spec tracking() -> boolean().
tracking() ->
    persistent_term:get(?KEY, undefined) =/= undefined.

%% @doc Derives the endpoint's material again if the node's cookie changed since it was made.
-spec follow(reference()) -> ok.
follow(Ep) ->
    case persistent_term:get(?KEY, undefined) of
        undefined ->
            ok;
        {Cookie, Host, Opts} ->
            case erlang:get_cookie() of
                %% auth is not running (distribution stopping): nothing to follow.
                nocookie -> ok;
                Current ->
                    case atom_to_binary(Current, utf8) of
                        Cookie -> ok;
                        _Changed -> rederive(Ep, Host, Opts)
                    end
            end
    end.

%% @doc Forgets the tracked cookie (the endpoint is closed).
-spec forget() -> ok.
forget() ->
    _ = persistent_term:erase(?KEY),
    _ = persistent_term:erase(?CLIENTS_KEY),
    ok.

%% @doc What to connect to Node with: `undefined' for the endpoint's own TLS material, or
%% material derived from the cookie erlang:set_cookie/2 gave Node (cookie mode only).
-spec client_for(reference(), node()) -> reference() | undefined.
client_for(Ep, Node) ->
    case persistent_term:get(?KEY, undefined) of
        undefined ->
            undefined;
        {Own, Host, Opts} ->
            case erlang:get_cookie(Node) of
                nocookie ->
                    undefined;
                NodeCookie ->
                    case atom_to_binary(NodeCookie, utf8) of
                        Own -> undefined;
                        Cookie -> per_node_client(Ep, Cookie, Host, Opts)
                    end
            end
    end.

per_node_client(Ep, Cookie, Host, Opts) ->
    Clients = persistent_term:get(?CLIENTS_KEY, #{}),
    case Clients of
        #{Cookie := Client} ->
            Client;
        _ ->
            Tls = (quic_dist_opts:tls(Opts, Host))#{cookie => Cookie},
            case quic_dist_nif:endpoint_client(Ep, Tls) of
                {ok, Client} ->
                    persistent_term:put(?CLIENTS_KEY, Clients#{Cookie => Client}),
                    Client;
                {error, Reason} ->
                    ?LOG_ERROR("quic_dist cannot derive TLS material from a per-node cookie: ~ts",
                               [Reason]),
                    undefined
            end
    end.

%% The new cookie is tracked even when its material cannot be made (an empty cookie): the
%% error is logged once, not at every connection.
rederive(Ep, Host, Opts) ->
    Tls = quic_dist_opts:tls(Opts, Host),
    track(Tls, Opts),
    case quic_dist_nif:endpoint_set_tls(Ep, Tls) of
        ok ->
            ?LOG_NOTICE("quic_dist: the node's cookie changed; cookie-mode TLS trust now derives "
                        "from the new cookie (connections already up keep theirs)");
        {error, Reason} ->
            ?LOG_ERROR("quic_dist cannot derive TLS material from the new cookie: ~ts; "
                       "connections keep using the previous cookie's", [Reason])
    end.
