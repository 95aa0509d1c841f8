defmodule QuicDist do
  @moduledoc """
  Erlang/Elixir distribution over QUIC: an alternative carrier for `Node.connect/1`, `:rpc`,
  `GenServer.call({name, node}, ...)`, `:global` and everything else that uses distribution.

  The carrier is selected when the VM boots, with the `-proto_dist quic` flag (`-proto_dist
  quic6` over IPv6), and its code must be on the code path at that moment:

    * in a release, put `-proto_dist quic` in `rel/vm.args.eex` and `rel/remote.vm.args.eex`
      (see the README of `mix_project/`);
    * with `iex -S mix`, pass the path of the compiled application yourself, because the VM reads
      `-proto_dist` before Mix adds dependencies to the code path:

          iex --erl "-pa _build/dev/lib/quic_dist/ebin -proto_dist quic" --name a@127.0.0.1 -S mix

  With no options, nodes that share a cookie trust each other through a TLS CA derived from the
  cookie (development). For production give each node a certificate: `-quic_dist_opt certfile F
  keyfile F cacertfile F` in vm.args, or the `:quic_dist` application environment in
  sys.config (`config/config.exs`; **not** `config/runtime.exs`, which is evaluated after
  distribution started). `gen_certs/2` and `mix quic_dist.gen.certs` create the files.

  This module is a thin Elixir layer over the Erlang modules `:quic_dist` (the carrier) and
  `:quic_dist_certs`.
  """

  @typedoc "What `info/1` reports about one connection (see `info/1`)."
  @type info :: %{optional(atom()) => term()}

  @doc """
  Describes the QUIC connection to `node`.

  Returns `{:ok, map}` when `node` is connected over quic_dist, `{:error, :not_connected}`
  otherwise (not connected at all, or connected through another carrier). The map has, among
  others:

    * `:node` - the peer node
    * `:mode` - `:cookie` (trust derived from the cookie), `:certificates`, or `:insecure`
    * `:tls_version`, `:cipher_suite` - e.g. `"TLSv1.3"`, `"TLS13_AES_128_GCM_SHA256"`
    * `:peer_certificate` - subject, issuer, names and validity of the peer's certificate
    * `:rtt_us` - QUIC's current round-trip estimate, in microseconds
    * `:streams` - QUIC streams used by the connection
    * `:stats` - counters (bytes and packets in each direction, ...)

  ## Examples

      iex> Node.connect(:"b@127.0.0.1")
      true
      iex> {:ok, info} = QuicDist.info(:"b@127.0.0.1")
      iex> info.tls_version
      "TLSv1.3"
      iex> QuicDist.info(:"nobody@127.0.0.1")
      {:error, :not_connected}
  """
  @spec info(node()) :: {:ok, info()} | {:error, :not_connected}
  def info(node) when is_atom(node) do
    if distributed_over_quic?() do
      :quic_dist.info(node)
    else
      {:error, :not_connected}
    end
  end

  @doc """
  `info/1` of every node connected over quic_dist, as a map from node to info.
  """
  @spec info() :: %{node() => info()}
  def info do
    if distributed_over_quic?(), do: :quic_dist.info(), else: %{}
  end

  @doc """
  The nodes this node is connected to over quic_dist (visible and hidden ones, e.g. remote
  shells and `bin/my_app rpc`).

  Returns `[]` when this node is not distributed over quic_dist.
  """
  @spec connections() :: [node()]
  def connections do
    if distributed_over_quic?(), do: :quic_dist.connections(), else: []
  end

  @doc """
  Loads this node's certificate files again, for example right after a tool renewed them.

  The node also notices changed files by itself: when it connects to a node (looking at most
  once a second), and every 10 seconds for the connections it accepts. New connections use the new certificate;
  connections already up keep theirs. Returns `:ok`, or `{:error, reason}` when the files
  cannot be loaded (the node keeps the certificate it has), when the node runs in cookie mode
  (`:not_in_certificate_mode`) or is not distributed over quic_dist (`:not_distributed`).
  """
  @spec reload_certificates() :: :ok | {:error, term()}
  def reload_certificates do
    if distributed_over_quic?(),
      do: :quic_dist.reload_certificates(),
      else: {:error, :not_distributed}
  end

  @doc """
  True when this VM was started with `-proto_dist quic` (or `quic6`) and distribution is
  running.
  """
  @spec distributed_over_quic?() :: boolean()
  def distributed_over_quic? do
    case :init.get_argument(:proto_dist) do
      {:ok, values} -> Node.alive?() and Enum.any?(values, &quic_carrier?/1)
      :error -> false
    end
  end

  defp quic_carrier?(proto_dist_args),
    do: Enum.any?(proto_dist_args, &(&1 in [~c"quic", ~c"quic6"]))

  @doc """
  Creates a cluster CA and node certificates in `dir`.

  Writes `ca.pem` and `ca_key.pem` (unless both exist: an existing CA is reused) and, for each
  `{name, hosts}` in `nodes`, `NAME.pem` and `NAME_key.pem`: a certificate signed by the CA that
  names `hosts`, the DNS names or IP addresses that appear after the `@` of the node names using
  it (`app1@10.0.0.1` needs `"10.0.0.1"`, `app1@app1.example.com` needs `"app1.example.com"`;
  `"*.example.com"` is allowed). `hosts` is a list or a comma-separated string. Keys are
  ECDSA P-256, made by the NIF (rcgen), so no openssl is needed; private keys are written with
  mode 0600. Keep `ca_key.pem` off the nodes.

  Returns `:ok` or `{:error, reason}`.

  ## Examples

      iex> QuicDist.gen_certs("/tmp/certs", [{"a", ["127.0.0.1", "localhost"]}, {"b", "127.0.0.1"}])
      :ok
      iex> File.ls!("/tmp/certs") |> Enum.sort()
      ["a.pem", "a_key.pem", "b.pem", "b_key.pem", "ca.pem", "ca_key.pem"]

  Then start node `a` with
  `-quic_dist_opt certfile /tmp/certs/a.pem keyfile /tmp/certs/a_key.pem cacertfile /tmp/certs/ca.pem`.
  """
  @spec gen_certs(Path.t(), [{String.t() | atom(), [String.t()] | String.t()}]) ::
          :ok | {:error, term()}
  def gen_certs(dir, nodes) when is_list(nodes) do
    with {:ok, specs} <- node_specs(nodes),
         :ok <- ensure_nif_loaded() do
      try do
        :quic_dist_certs.generate(String.to_charlist(Path.expand(dir)), specs)
      rescue
        e in MatchError ->
          case e.term do
            {:error, reason} -> {:error, reason}
            _ -> reraise e, __STACKTRACE__
          end
      else
        :ok -> :ok
        {:error, reason} -> {:error, reason}
      end
    end
  end

  @doc """
  Where the NIF library of this installation is expected: `priv/quic_dist_nif.so` next to the
  `ebin` directory that holds `:quic_dist_nif`.
  """
  @spec nif_path() :: Path.t() | nil
  def nif_path do
    case :code.which(:quic_dist_nif) do
      beam when is_list(beam) ->
        beam
        |> to_string()
        |> Path.dirname()
        |> Path.dirname()
        |> Path.join("priv/quic_dist_nif.so")

      _ ->
        nil
    end
  end

  @doc false
  # Loads the NIF module; `{:error, {:nif_not_loaded, path}}` names the library it needs.
  def ensure_nif_loaded do
    case :code.ensure_loaded(:quic_dist_nif) do
      {:module, _} -> :ok
      {:error, _} -> {:error, {:nif_not_loaded, nif_path()}}
    end
  end

  defp node_specs(nodes) do
    Enum.reduce_while(nodes, {:ok, []}, fn
      {name, hosts}, {:ok, acc} when (is_binary(name) or is_atom(name)) and name != "" ->
        case hosts_list(hosts) do
          [] -> {:halt, {:error, {:no_hosts, to_string(name)}}}
          list -> {:cont, {:ok, [{String.to_charlist(to_string(name)), list} | acc]}}
        end

      other, _ ->
        {:halt, {:error, {:bad_node_spec, other}}}
    end)
    |> case do
      {:ok, specs} -> {:ok, Enum.reverse(specs)}
      error -> error
    end
  end

  defp hosts_list(hosts) when is_binary(hosts), do: hosts_list(String.split(hosts, ","))
  defp hosts_list([c | _] = charlist) when is_integer(c), do: hosts_list(to_string(charlist))

  defp hosts_list(hosts) when is_list(hosts) do
    for host <- hosts,
        host = String.trim(to_string(host)),
        host != "",
        do: String.to_charlist(host)
  end

  defp hosts_list(_), do: []
end
