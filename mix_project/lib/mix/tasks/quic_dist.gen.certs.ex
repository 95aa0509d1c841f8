defmodule Mix.Tasks.QuicDist.Gen.Certs do
  @shortdoc "Creates a cluster CA and node certificates for quic_dist"

  @moduledoc """
  Creates a cluster CA and node certificates for quic_dist's certificate mode.

      mix quic_dist.gen.certs DIR NAME HOSTS [NAME HOSTS ...]

  `HOSTS` is a comma-separated list of the DNS names and IP addresses that appear after the `@`
  in the node names that will use the certificate. For example

      mix quic_dist.gen.certs rel/certs app1 app1.example.com,10.0.0.1 app2 app2.example.com

  writes `rel/certs/ca.pem` and `ca_key.pem` (an existing pair is reused, so more nodes can be
  added later) and `app1.pem`, `app1_key.pem`, `app2.pem`, `app2_key.pem`. Private keys get mode
  0600. Keep `ca_key.pem` off the nodes.

  Works in the quic_dist project and in any project that depends on `:quic_dist` (the
  dependency is compiled first, and its NIF makes the keys: no openssl is needed).

  Then start each node with, in `rel/vm.args.eex`:

      -quic_dist_opt certfile /path/app1.pem keyfile /path/app1_key.pem cacertfile /path/ca.pem

  See also `QuicDist.gen_certs/2`.
  """
  use Mix.Task

  @usage "mix quic_dist.gen.certs DIR NAME HOSTS [NAME HOSTS ...]   (HOSTS: host1,host2,...)"

  @impl Mix.Task
  def run(args) do
    {dir, nodes} = parse!(args)

    # Compiles (if needed) and puts :quic_dist, with its NIF in priv/, on the code path, also
    # when quic_dist is a dependency of the current project.
    Mix.Task.run("compile", [])

    case QuicDist.gen_certs(dir, nodes) do
      :ok ->
        files = [
          "ca.pem",
          "ca_key.pem" | Enum.flat_map(nodes, fn {n, _} -> ["#{n}.pem", "#{n}_key.pem"] end)
        ]

        Mix.shell().info(
          "quic_dist certificates in #{Path.expand(dir)}: #{Enum.join(files, ", ")}"
        )

        for {name, hosts} <- nodes do
          Mix.shell().info("  #{name}.pem names #{Enum.join(hosts, ", ")}")
        end

        :ok

      {:error, {:nif_not_loaded, path}} ->
        Mix.raise("""
        quic_dist: cannot load the NIF (expected at #{path || "priv/quic_dist_nif.so of :quic_dist"}).
        Rebuild it with `mix compile --force` (cargo must be installed).
        """)

      {:error, reason} ->
        Mix.raise("quic_dist: cannot create certificates in #{dir}: #{format(reason)}")
    end
  end

  defp parse!([dir | pairs]) when pairs != [] and rem(length(pairs), 2) == 0 do
    nodes =
      pairs
      |> Enum.chunk_every(2)
      |> Enum.map(fn [name, hosts] ->
        hosts = hosts |> String.split(",") |> Enum.map(&String.trim/1) |> Enum.reject(&(&1 == ""))

        if name == "" or hosts == [] or String.contains?(name, ["/", "\\"]) do
          Mix.raise(
            "quic_dist.gen.certs: bad node #{inspect(name)} #{inspect(hosts)}\nusage: #{@usage}"
          )
        end

        {name, hosts}
      end)

    {dir, nodes}
  end

  defp parse!(_), do: Mix.raise("usage: #{@usage}")

  defp format(reason) when is_binary(reason), do: reason
  defp format(reason), do: inspect(reason)
end
