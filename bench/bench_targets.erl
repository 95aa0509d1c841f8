%%% @doc The speed quic_dist must reach (issue 5 of the project), checked against one run's
%%% table: each target met or missed, from the ratios of that run only, or not measured when a
%%% carrier or scenario was left out.
-module(bench_targets).

-export([check/1, text/1, markdown/1, json/1]).

%% {Name, [{RowId, Carrier, Relation, Bound}]}: every condition of a target must hold.
%% Ratios are quic_dist's figure over the other carrier's, as in the table.
targets() ->
    [{"bulk 1 MiB: >= 10x TLS and >= 0.5x TCP",
      [{bulk_1m, tls, at_least, 10}, {bulk_1m, tcp, at_least, 0.5}]},
     {"100 B messages, 8 senders: >= 3x TLS and >= 0.7x TCP",
      [{small_8_msgs, tls, at_least, 3}, {small_8_msgs, tcp, at_least, 0.7}]},
     {"ping-pong RTT p50: <= 1.3x TCP", [{rtt_p50_us, tcp, at_most, 1.3}]},
     {"connection set-up: <= TCP", [{connect_ms, tcp, at_most, 1.0}]},
     {"head-of-line RTT p99: <= 0.2x TCP's", [{hol_p99_us, tcp, at_most, 0.2}]},
     {"bulk under 1% loss: above TCP", [{loss_bulk, tcp, above, 1.0}]}].

%% @doc Each target with its ratios and verdict: met, missed or not_measured.
-spec check([map()]) -> [map()].
check(Rows) ->
    Values = maps:from_list([{Id, V} || #{id := Id, values := V} <- Rows]),
    [begin
         Ratios = [{Row, Other, Rel, Bound, ratio(maps:get(Row, Values, #{}), Other)}
                   || {Row, Other, Rel, Bound} <- Conditions],
         Verdict = case [R || {_, _, _, _, R} <- Ratios, R =:= null] of
                       [_ | _] -> not_measured;
                       [] ->
                           case lists:all(fun holds/1, Ratios) of
                               true -> met;
                               false -> missed
                           end
                   end,
         #{target => Name, verdict => Verdict,
           ratios => [#{row => Row, over => Other, ratio => R} || {Row, Other, _, _, R} <- Ratios]}
     end || {Name, Conditions} <- targets()].

ratio(V, Other) ->
    case {maps:get(quic, V, null), maps:get(Other, V, null)} of
        {Q, O} when is_number(Q), is_number(O), O /= 0 -> Q / O;
        _ -> null
    end.

holds({_, _, at_least, Bound, R}) -> R >= Bound;
holds({_, _, at_most, Bound, R}) -> R =< Bound;
holds({_, _, above, Bound, R}) -> R > Bound.

%% @doc Lines for the printed table.
-spec text([map()]) -> iolist().
text(Checked) ->
    ["speed targets (issue 5), this run's ratios:\n", lines("  ~-55s ~-24s ~s~n", Checked)].

%% @doc The same as Markdown rows.
-spec markdown([map()]) -> iolist().
markdown(Checked) ->
    ["\n| speed target (issue 5) | this run | verdict |\n|---|---|---|\n",
     lines("| ~s | ~s | ~s |~n", Checked)].

%% One line per target: name, ratios, verdict.
lines(Format, Checked) ->
    [io_lib:format(Format, [Name, ratios_text(Ratios), Verdict])
     || #{target := Name, verdict := Verdict, ratios := Ratios} <- Checked].

%% @doc For the JSON file: names as binaries.
-spec json([map()]) -> [map()].
json(Checked) ->
    [C#{target := list_to_binary(Name)} || #{target := Name} = C <- Checked].

ratios_text(Ratios) ->
    lists:join(", ", [case R of
                          null -> ["- x ", string:uppercase(atom_to_list(Over))];
                          _ -> io_lib:format("~.2fx ~s", [R, string:uppercase(atom_to_list(Over))])
                      end || #{over := Over, ratio := R} <- Ratios]).
