%%% @doc A test `-epmd_module': erl_epmd, except that port_please/2,3 can be redirected for one
%%% node name, so that a node dials a UDP relay instead of the real port of that node.
%%%
%%% `persistent_term:put({quic_dist_test_epmd, redirect}, {NodeName, Port})' on the node (for
%%% example through peer:call) makes every later lookup of NodeName (the part before the @)
%%% answer Port; everything else goes to erl_epmd unchanged.
-module(quic_dist_test_epmd).

-export([start/0, start_link/0, stop/0,
         port_please/2, port_please/3, listen_port_please/2,
         names/0, names/1, register_node/2, register_node/3, address_please/3]).

-define(KEY, {?MODULE, redirect}).

start() -> erl_epmd:start().
start_link() -> erl_epmd:start_link().
stop() -> erl_epmd:stop().

port_please(Name, Host) ->
    redirect(Name, erl_epmd:port_please(Name, Host)).

port_please(Name, Host, Timeout) ->
    redirect(Name, erl_epmd:port_please(Name, Host, Timeout)).

listen_port_please(Name, Host) -> erl_epmd:listen_port_please(Name, Host).
names() -> erl_epmd:names().
names(Host) -> erl_epmd:names(Host).
register_node(Name, Port) -> erl_epmd:register_node(Name, Port).
register_node(Name, Port, Driver) -> erl_epmd:register_node(Name, Port, Driver).
address_please(Name, Host, Family) -> erl_epmd:address_please(Name, Host, Family).

%% The real answer, with the port replaced when Name is the redirected one.
redirect(Name, Real) ->
    case {persistent_term:get(?KEY, undefined), Real} of
        {{Target, Port}, {port, _RealPort, Version}} ->
            case to_list(Name) =:= to_list(Target) of
                true -> {port, Port, Version};
                false -> Real
            end;
        _ ->
            Real
    end.

to_list(A) when is_atom(A) -> atom_to_list(A);
to_list(B) when is_binary(B) -> binary_to_list(B);
to_list(L) when is_list(L) -> L.
