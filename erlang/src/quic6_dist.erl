%%% @doc Erlang distribution over QUIC and IPv6: the carrier module for `-proto_dist quic6'.
%%%
%%% The same carrier as quic_dist (processes, NIF, options, certificates), with the node's
%%% UDP endpoint, epmd registration and name resolution in the IPv6 family, as inet6_tcp_dist
%%% is to inet_tcp_dist. Every callback runs in its caller and forwards to quic_dist.
-module(quic6_dist).

%% Carrier callbacks called by net_kernel.
-export([listen/1, listen/2, accept/1, accept_connection/5, setup/5, close/1,
         select/1, address/0, is_node_name/1, setopts/2, getopts/2, childspecs/0]).

-include_lib("kernel/include/net_address.hrl").

-define(FAMILY, inet6).

%% @doc Children started under net_sup before epmd and net_kernel: the NIF runtime and logging
%% (none when `-proto_dist' names quic too, whose childspecs start the same process; the node
%% then refuses to listen with both, see quic_dist:listen/3).
-spec childspecs() -> {ok, [supervisor:child_spec()]}.
childspecs() ->
    case init:get_argument(proto_dist) of
        {ok, Lists} ->
            case lists:member("quic", lists:append(Lists)) of
                true -> {ok, []};
                false -> quic_dist:childspecs()
            end;
        error ->
            quic_dist:childspecs()
    end.

%% @doc Opens the node's UDP endpoint on IPv6 and registers its port with epmd (OTP < 23).
-spec listen(atom()) -> {ok, {term(), #net_address{}, integer()}} | {error, term()}.
listen(Name) ->
    {ok, Host} = inet:gethostname(),
    listen(Name, Host).

%% @doc Opens the node's UDP endpoint on IPv6 and registers its port with epmd.
-spec listen(atom(), string()) -> {ok, {term(), #net_address{}, integer()}} | {error, term()}.
listen(Name, Host) ->
    quic_dist:listen(Name, Host, ?FAMILY).

%% @doc Starts the acceptor, which hands incoming connections to net_kernel.
-spec accept(term()) -> pid().
accept(Ep) ->
    quic_dist:accept(Ep).

%% @doc Runs the accepting side of the handshake in a new dist_util supervisor process.
-spec accept_connection(pid(), pid(), node(), list(), non_neg_integer()) -> pid().
accept_connection(AcceptorPid, Ctrl, MyNode, Allowed, SetupTime) ->
    quic_dist:accept_connection(AcceptorPid, Ctrl, MyNode, Allowed, SetupTime).

%% @doc Connects to Node over IPv6 and runs the initiating side of the handshake.
-spec setup(node(), hidden | normal, node(), longnames | shortnames, non_neg_integer()) -> pid().
setup(Node, Type, MyNode, LongOrShortNames, SetupTime) ->
    quic_dist:setup(Node, Type, MyNode, LongOrShortNames, SetupTime, ?FAMILY).

%% @doc Closes the endpoint: every connection is closed and peers are told at once.
-spec close(term()) -> ok.
close(Ep) ->
    quic_dist:close(Ep).

%% @doc True if Node's host resolves to an IPv6 address.
-spec select(node()) -> boolean().
select(Node) ->
    quic_dist:select(Node, ?FAMILY).

%% @doc The address record of a node that does not listen (`-dist_listen false').
-spec address() -> #net_address{}.
address() ->
    quic_dist:address(?FAMILY).

%% @doc True if Node has the form Name@Host.
-spec is_node_name(node()) -> boolean().
is_node_name(Node) ->
    quic_dist:is_node_name(Node).

%% @doc Options for new connections: nothing to set on a UDP endpoint.
-spec setopts(term(), list()) -> ok | {error, term()}.
setopts(Listen, Opts) ->
    quic_dist:setopts(Listen, Opts).

%% @doc Options of new connections: none.
-spec getopts(term(), list()) -> {ok, list()}.
getopts(Listen, Opts) ->
    quic_dist:getopts(Listen, Opts).
