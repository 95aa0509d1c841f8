%%% @doc Loads the NIF and forwards the Rust side's `tracing' events to `logger'.
%%%
%%% Started by quic_dist:childspecs/0 under net_sup, before net_kernel, so the NIF is loaded
%%% and logs when net_kernel calls listen. A crash here would restart all of distribution
%%% (net_sup is one_for_all with intensity 0), so the loop only formats and logs.
-module(quic_dist_log).

-export([start_link/0, ensure_started/1, log_when_ready/3]).

-include_lib("kernel/include/logger.hrl").

%% quinn_udp at error only: with the socket's error reports on (a dead peer's closed port, see
%% direct/unreachable.rs) every failed send surfaces as an error, and quinn_udp warns of each kind
%% (a peer's closed port, which the transport reports itself, or a full queue on a local link,
%% which QUIC's loss recovery handles) where a warning says nothing the user can act on.
-define(DEFAULT_FILTER,
        "quic_dist_transport=info,quic_dist_nif=info,quinn=warn,quinn_proto=warn,quinn_udp=error").

%% @doc Starts the registered log process (and loads the NIF).
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    start([link]).

%% @doc Logs once the boot-time `simple' logger handler is gone. Events logged while the kernel
%% starts (distribution starts inside it) are printed by that handler and again when it replays
%% them to the default handler: this prints them once.
-spec log_when_ready(logger:level(), io:format(), [term()]) -> ok.
log_when_ready(Level, Format, Args) ->
    case whereis(?MODULE) of
        undefined -> ?LOG(Level, Format, Args);
        Pid -> Pid ! {log_when_ready, Level, Format, Args}
    end,
    ok.

%% @doc Makes sure the NIF is loaded and logs (distribution started without our childspec).
-spec ensure_started(map()) -> ok.
ensure_started(_Opts) ->
    case whereis(?MODULE) of
        undefined -> {ok, _} = start([]), ok;
        _ -> ok
    end.

start(SpawnOpts) ->
    Parent = self(),
    Pid = proc_lib:spawn_opt(fun() -> init(Parent) end, SpawnOpts),
    Mon = monitor(process, Pid),
    receive
        {Pid, started} -> demonitor(Mon, [flush]), {ok, Pid};
        {Pid, {error, _} = Error} -> demonitor(Mon, [flush]), Error;
        {'DOWN', Mon, process, Pid, Reason} -> {error, Reason}
    end.

init(Parent) ->
    case catch register(?MODULE, self()) of
        true ->
            Opts = quic_dist_opts:get(),
            Filter = unicode:characters_to_binary(maps:get(log_filter, Opts, ?DEFAULT_FILTER)),
            case load_and_init(Filter) of
                ok ->
                    Parent ! {self(), started},
                    loop();
                {error, _} = Error ->
                    ?LOG_ERROR("quic_dist cannot start its logging: ~ts", [element(2, Error)],
                               #{}),
                    Parent ! {self(), Error}
            end;
        _ ->
            %% Another instance won the race; it owns the logging.
            Parent ! {self(), started}
    end.

load_and_init(Filter) ->
    case quic_dist_nif:load() of
        ok -> quic_dist_nif:log_init(self(), Filter);
        {error, Reason} -> {error, io_lib:format("cannot load the NIF: ~p", [Reason])}
    end.

loop() ->
    receive
        {quic_dist_log, Level, Target, Message} ->
            ?LOG(Level, "~ts: ~ts", [Target, Message], #{quic_dist => rust, rust_target => Target}),
            loop();
        {log_when_ready, Level, Format, Args} = Msg ->
            case lists:member(simple, logger:get_handler_ids()) of
                true -> erlang:send_after(100, self(), Msg);
                false -> ?LOG(Level, Format, Args)
            end,
            loop();
        _Other ->
            loop()
    end.
