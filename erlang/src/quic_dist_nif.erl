%%% @doc The Rust NIF: stubs replaced at load time. See crates/quic_dist_nif.
%%%
%%% The library is looked up next to this module (../priv/quic_dist_nif.so), so that it loads
%%% during boot, when distribution starts and before code:priv_dir/1 can be relied on.
%%%
%%% No `-on_load': in an embedded release the boot script loads modules first and runs their
%%% on_load functions only after the kernel (and so distribution) has started. Callers load
%%% the library explicitly with load/0, which is idempotent.
-module(quic_dist_nif).

-export([load/0, nif_memory/0]).
-export([log_init/2,
         endpoint_open/5, endpoint_port/1, endpoint_accept/3, endpoint_admit/1,
         endpoint_set_tls/2, endpoint_receive/1, endpoint_poll/2,
         endpoint_unwatch/1, endpoint_close/2, endpoint_client/2, connect/7,
         conn_start/3, conn_send/2, conn_data_mode/2, conn_open_input/1, conn_tick/1, conn_ack/3, conn_run_tasks/1, conn_getstat/1, conn_stats/1,
         conn_info/1, conn_peer_names/2, conn_shutdown/2,
         unix_now/0, cert_names_host/2, gen_ca/3, gen_intermediate/5, gen_node_cert/6]).

-define(NOT_LOADED, erlang:nif_error({not_loaded, ?MODULE})).

%% @doc Loads priv/quic_dist_nif.so unless it is loaded already.
-spec load() -> ok | {error, term()}.
load() ->
    case erlang:module_loaded(?MODULE) andalso loaded() of
        true -> ok;
        false ->
            Lib = filename:join(priv_dir(), "quic_dist_nif"),
            case erlang:load_nif(Lib, 0) of
                ok -> ok;
                {error, {reload, _}} -> ok;
                {error, {Reason, Text}} ->
                    error_logger:error_msg("quic_dist: cannot load NIF ~ts: ~p ~ts~n",
                                           [Lib, Reason, Text]),
                    {error, {Reason, Text}}
            end
    end.

loaded() ->
    try unix_now() of
        _ -> true
    catch
        error:{not_loaded, ?MODULE} -> false
    end.

priv_dir() ->
    case code:which(?MODULE) of
        Beam when is_list(Beam) ->
            filename:join(filename:dirname(filename:dirname(Beam)), "priv");
        _ ->
            case code:priv_dir(quic_dist) of
                Dir when is_list(Dir) -> Dir;
                _ -> "priv"
            end
    end.

%% Forwards the NIF's log events (filtered by LogFilter, tracing's syntax) to LogPid.
-spec log_init(pid(), binary()) -> ok | {error, binary()}.
log_init(_LogPid, _LogFilter) -> ?NOT_LOADED.

%% Reads the endpoint's socket on the caller's scheduler (QUIC, deliveries, new connections),
%% then arms a `{select, _, undefined, ready_input}' message to the caller for the next datagram.
-spec endpoint_receive(reference()) -> ok | {error, binary()}.
endpoint_receive(_Ep) -> ?NOT_LOADED.

%% Reads what waits on the endpoint's socket as endpoint_receive/1 does, without arming a
%% select: the number of datagrams it read. With YieldIfEmpty, a read that found nothing gives
%% the core away (sched_yield).
-spec endpoint_poll(reference(), boolean()) -> non_neg_integer() | {error, binary()}.
endpoint_poll(_Ep, _YieldIfEmpty) -> ?NOT_LOADED.

%% Stops the `select' messages of endpoint_receive/1.
-spec endpoint_unwatch(reference()) -> ok.
endpoint_unwatch(_Ep) -> ?NOT_LOADED.

-spec endpoint_open(inet:ip_address(), inet:port_number(), boolean(), map(), map()) ->
          {ok, reference()} | {error, binary()}.
endpoint_open(_Ip, _Port, _Listen, _Tls, _Opts) -> ?NOT_LOADED.

-spec endpoint_port(reference()) -> inet:port_number().
endpoint_port(_Ep) -> ?NOT_LOADED.

%% Sends {quic_dist_incoming, Conn} to Acceptor for each accepted connection. With Hold, new
%% connections wait before their TLS handshake until endpoint_admit/1, and `quic_dist_held'
%% goes to Acceptor when some start waiting.
-spec endpoint_accept(reference(), pid(), boolean()) -> ok.
endpoint_accept(_Ep, _Acceptor, _Hold) -> ?NOT_LOADED.

%% Starts the TLS handshakes of the held connections.
-spec endpoint_admit(reference()) -> ok.
endpoint_admit(_Ep) -> ?NOT_LOADED.

%% Uses the TLS identity and trust Tls (as endpoint_open/5 takes it) from now on.
-spec endpoint_set_tls(reference(), map()) -> ok | {error, binary()}.
endpoint_set_tls(_Ep, _Tls) -> ?NOT_LOADED.

-spec endpoint_close(reference(), binary()) -> ok.
endpoint_close(_Ep, _Reason) -> ?NOT_LOADED.

%% A TLS identity and trust (as endpoint_open/5 takes it) to connect with instead of the
%% endpoint's own (connect/7).
-spec endpoint_client(reference(), map()) -> {ok, reference()} | {error, binary()}.
endpoint_client(_Ep, _Tls) -> ?NOT_LOADED.

%% Starts a connection with the endpoint's identity (Client = undefined) or Client's;
%% {quic_dist_connected, Ref, {ok, Conn} | {error, Reason}} goes to Owner.
-spec connect(reference(), inet:ip_address(), inet:port_number(), binary(), pid(), reference(),
              reference() | undefined) -> ok.
connect(_Ep, _Ip, _Port, _ServerName, _Owner, _Ref, _Client) -> ?NOT_LOADED.

-spec conn_start(reference(), pid(), pid()) -> ok | {error, binary()}.
conn_start(_Conn, _Input, _Controller) -> ?NOT_LOADED.

-spec conn_send(reference(), [iodata()]) ->
          ok | busy | {ok | busy, [{non_neg_integer(), binary()}]} | {error, binary()}.
conn_send(_Conn, _Packets) -> ?NOT_LOADED.

-spec conn_tick(reference()) -> ok.
conn_tick(_Conn) -> ?NOT_LOADED.

%% The NIF's own heap memory (bytes now and at most), which erlang:memory/0 does not count.
-spec nif_memory() -> #{allocated := non_neg_integer(), peak := non_neg_integer()}.
nif_memory() -> ?NOT_LOADED.

-spec conn_data_mode(reference(), pos_integer()) -> ok | {error, binary()}.
conn_data_mode(_Conn, _Streams) -> ?NOT_LOADED.

-spec conn_open_input(reference()) -> ok.
conn_open_input(_Conn) -> ?NOT_LOADED.

-spec conn_ack(reference(), non_neg_integer(), non_neg_integer()) -> ok | run_tasks.
conn_ack(_Conn, _Channel, _Bytes) -> ?NOT_LOADED.

-spec conn_run_tasks(reference()) -> ok.
conn_run_tasks(_Conn) -> ?NOT_LOADED.

-spec conn_getstat(reference()) -> {ok, non_neg_integer(), non_neg_integer(), non_neg_integer()}.
conn_getstat(_Conn) -> ?NOT_LOADED.

-spec conn_stats(reference()) -> map().
conn_stats(_Conn) -> ?NOT_LOADED.

-spec conn_info(reference()) -> map().
conn_info(_Conn) -> ?NOT_LOADED.

-spec conn_peer_names(reference(), binary()) -> boolean().
conn_peer_names(_Conn, _Host) -> ?NOT_LOADED.

-spec conn_shutdown(reference(), binary()) -> ok.
conn_shutdown(_Conn, _Reason) -> ?NOT_LOADED.

-spec unix_now() -> integer().
unix_now() -> ?NOT_LOADED.

-spec cert_names_host(binary(), binary()) -> boolean().
cert_names_host(_Der, _Host) -> ?NOT_LOADED.

-spec gen_ca(binary(), integer(), integer()) -> {ok, {binary(), binary()}} | {error, binary()}.
gen_ca(_CommonName, _NotBefore, _NotAfter) -> ?NOT_LOADED.

-spec gen_intermediate(binary(), binary(), binary(), integer(), integer()) ->
          {ok, {binary(), binary()}} | {error, binary()}.
gen_intermediate(_CaCert, _CaKey, _CommonName, _NotBefore, _NotAfter) -> ?NOT_LOADED.

-spec gen_node_cert(binary(), binary(), binary(), [binary()], integer(), integer()) ->
          {ok, {binary(), binary()}} | {error, binary()}.
gen_node_cert(_CaCert, _CaKey, _CommonName, _Names, _NotBefore, _NotAfter) -> ?NOT_LOADED.
