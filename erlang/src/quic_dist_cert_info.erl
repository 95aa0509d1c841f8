%%% @doc A readable summary of a peer certificate, decoded with OTP's public_key.
-module(quic_dist_cert_info).

-export([summary/1, validity/1]).

-include_lib("public_key/include/public_key.hrl").

%% @doc Subject, issuer, validity and subject alternative names of a DER certificate.
-spec summary(binary()) -> map().
summary(Der) ->
    try public_key:pkix_decode_cert(Der, otp) of
        #'OTPCertificate'{tbsCertificate = Tbs} ->
            #'OTPTBSCertificate'{subject = Subject, issuer = Issuer,
                                 validity = #'Validity'{notBefore = NB, notAfter = NA},
                                 extensions = Exts} = Tbs,
            #{subject => format_name(Subject),
              issuer => format_name(Issuer),
              not_before => format_time(NB),
              not_after => format_time(NA),
              subject_alt_names => alt_names(Exts)}
    catch
        _:Reason -> #{error => Reason}
    end.

%% @doc The validity period of a DER certificate, in Unix seconds.
-spec validity(binary()) -> {ok, {integer(), integer()}} | {error, term()}.
validity(Der) ->
    try public_key:pkix_decode_cert(Der, otp) of
        #'OTPCertificate'{tbsCertificate = #'OTPTBSCertificate'{
                                              validity = #'Validity'{notBefore = NB,
                                                                     notAfter = NA}}} ->
            {ok, {unix_seconds(NB), unix_seconds(NA)}}
    catch
        _:Reason -> {error, Reason}
    end.

unix_seconds(Time) ->
    pubkey_cert:time_str_2_gregorian_sec(Time)
        - calendar:datetime_to_gregorian_seconds({{1970, 1, 1}, {0, 0, 0}}).

format_name({rdnSequence, Rdns}) ->
    Parts = [[attr_name(T), $=, attr_value(V)]
             || Rdn <- Rdns, #'AttributeTypeAndValue'{type = T, value = V} <- Rdn],
    unicode:characters_to_binary(lists:join(",", Parts)).

attr_name(?'id-at-commonName') -> "CN";
attr_name(?'id-at-organizationName') -> "O";
attr_name(?'id-at-organizationalUnitName') -> "OU";
attr_name(?'id-at-countryName') -> "C";
attr_name(Oid) -> lists:join(".", [integer_to_list(I) || I <- tuple_to_list(Oid)]).

attr_value({_Type, V}) -> attr_value(V);
attr_value(V) when is_binary(V) -> V;
attr_value(V) when is_list(V) -> V;
attr_value(V) -> io_lib:format("~p", [V]).

%% ISO 8601 in UTC ("2036-11-30T11:28:47Z"), not the ASN.1 string ("361130112847Z").
format_time(Time) ->
    Seconds = pubkey_cert:time_str_2_gregorian_sec(Time),
    {{Y, Mo, D}, {H, Mi, S}} = calendar:gregorian_seconds_to_datetime(Seconds),
    iolist_to_binary(io_lib:format("~4..0b-~2..0b-~2..0bT~2..0b:~2..0b:~2..0bZ",
                                   [Y, Mo, D, H, Mi, S])).

alt_names(asn1_NOVALUE) -> [];
alt_names(Exts) ->
    lists:append([[alt_name(N) || N <- Names]
                  || #'Extension'{extnID = ?'id-ce-subjectAltName', extnValue = Names} <- Exts]).

alt_name({dNSName, N}) -> {dns, unicode:characters_to_binary(N)};
alt_name({iPAddress, A}) when is_binary(A) -> {ip, ip_tuple(binary_to_list(A))};
alt_name({iPAddress, A}) when is_list(A) -> {ip, ip_tuple(A)};
alt_name(Other) -> Other.

ip_tuple(Bytes) when length(Bytes) =:= 4 -> list_to_tuple(Bytes);
ip_tuple(Bytes) when length(Bytes) =:= 16 ->
    list_to_tuple([(H bsl 8) bor L || {H, L} <- pairs(Bytes)]);
ip_tuple(Bytes) -> Bytes.

pairs([H, L | Rest]) -> [{H, L} | pairs(Rest)];
pairs([]) -> [].
