defmodule QuicDistTest do
  # Nodes started with :peer, distributed over QUIC with the ebin Mix built for this run.
  use ExUnit.Case, async: false

  alias QuicDistTest.Peers

  @moduletag :peers

  describe "built by Mix" do
    test "the compiler installed the NIF next to the ebin, where quic_dist_nif looks for it" do
      so = Path.join([Mix.Project.app_path(), "priv", "quic_dist_nif.so"])
      assert File.regular?(so)
      assert QuicDist.nif_path() == so
      assert :ok = QuicDist.ensure_nif_loaded()

      {:ok, app} = :application.get_all_key(:quic_dist)
      assert :quic_dist in app[:modules] and :quic_dist_nif in app[:modules]
      assert QuicDist in app[:modules]
      assert app[:registered] == [:quic_dist_log, :quic_dist_receiver]
    end

    test "this test VM is not distributed over QUIC: the API says so instead of failing" do
      refute QuicDist.distributed_over_quic?()
      assert QuicDist.connections() == []
      assert QuicDist.info(:"nobody@127.0.0.1") == {:error, :not_connected}
      assert QuicDist.info() == %{}
      assert QuicDist.reload_certificates() == {:error, :not_distributed}
    end
  end

  describe "cookie mode (no certificate options)" do
    test "Node.connect, :rpc.call, GenServer.call and QuicDist.info between two nodes" do
      [a, b] = Peers.start_many([[prefix: "a"], [prefix: "b"]])
      {:ok, _} = Peers.call(b, QuicDistTest.Echo, :start, [])

      assert Peers.call(a, Node, :connect, [b.node]) == true
      assert Peers.call(a, Node, :list, []) == [b.node]
      assert Peers.call(b, Node, :list, []) == [a.node]

      # rpc and a GenServer call by {name, node}, with a message bigger than one QUIC packet
      # and bigger than OTP's 64 KiB fragment size.
      assert Peers.call(a, :rpc, :call, [b.node, :erlang, :node, []]) == b.node
      assert Peers.call(a, :rpc, :call, [b.node, System, :version, []]) == System.version()
      big = :crypto.strong_rand_bytes(300_000)
      reply = Peers.call(a, GenServer, :call, [{QuicDistTest.Echo, b.node}, {:echo, big}])
      assert %{node: node_b, from_node: node_a, echo: ^big, count: 1} = reply
      assert {node_b, node_a} == {b.node, a.node}

      # QuicDist on both sides.
      assert Peers.call(a, QuicDist, :distributed_over_quic?, [])
      assert Peers.call(a, QuicDist, :connections, []) == [b.node]
      assert Peers.call(b, QuicDist, :connections, []) == [a.node]
      assert {:ok, info} = Peers.call(a, QuicDist, :info, [b.node])
      assert info.node == b.node
      assert info.mode == :cookie
      assert info.tls_version == "TLSv1.3"
      assert is_binary(info.cipher_suite) and info.cipher_suite =~ "TLS13_"
      assert is_integer(info.rtt_us) and info.rtt_us >= 0
      assert is_integer(info.streams) and info.streams >= 1
      assert is_map(info.stats)
      assert %{} = info.peer_certificate
      assert Peers.call(a, QuicDist, :info, []) |> Map.keys() == [b.node]
      assert Peers.call(a, QuicDist, :info, [:"nobody@127.0.0.1"]) == {:error, :not_connected}

      # Disconnect: this side notices at once, and info/1 says so.
      assert Peers.call(a, Node, :disconnect, [b.node]) == true
      assert Peers.call(a, QuicDist, :info, [b.node]) == {:error, :not_connected}

      # No certificate files to reload in cookie mode.
      assert Peers.call(a, QuicDist, :reload_certificates, []) ==
               {:error, :not_in_certificate_mode}
    end

    test "IPv6: -proto_dist quic6 nodes named on ::1 connect, call and report the link" do
      v6 = [proto_dist: "quic6", host: "::1"]
      [a, b] = Peers.start_many([[prefix: "a"] ++ v6, [prefix: "b"] ++ v6])
      {:ok, _} = Peers.call(b, QuicDistTest.Echo, :start, [])

      assert Peers.call(a, Node, :connect, [b.node]) == true
      assert Atom.to_string(b.node) =~ ~r/@::1$/
      assert Peers.call(a, :rpc, :call, [b.node, :erlang, :node, []]) == b.node
      reply = Peers.call(a, GenServer, :call, [{QuicDistTest.Echo, b.node}, {:echo, "over v6"}])
      assert %{echo: "over v6", from_node: from} = reply
      assert from == a.node

      assert Peers.call(a, QuicDist, :distributed_over_quic?, [])
      assert Peers.call(a, QuicDist, :connections, []) == [b.node]
      assert {:ok, info} = Peers.call(a, QuicDist, :info, [b.node])
      assert {{0, 0, 0, 0, 0, 0, 0, 1}, port} = info.remote
      assert is_integer(port)
      assert info.mode == :cookie
    end

    test "after Node.disconnect/1 both sides stay disconnected (global running)" do
      [a, b] = Peers.start_many([[prefix: "a"], [prefix: "b"]])
      assert Peers.call(a, Node, :connect, [b.node])
      assert Peers.call(a, :rpc, :call, [b.node, :global, :whereis_name, [:nobody]]) == :undefined
      assert Peers.call(a, Node, :disconnect, [b.node]) == true

      assert Peers.eventually(fn -> Peers.call(b, Node, :list, []) == [] end),
             "b still lists a after a disconnected"

      assert Peers.call(a, Node, :list, []) == []
    end

    test "nodes with different cookies do not connect, and both sides log why" do
      [a, c] =
        Peers.start_many([[prefix: "a"], [prefix: "c", cookie: "another_cookie_#{System.pid()}"]])

      assert Peers.call(c, Node, :connect, [a.node]) == false
      assert Peers.call(a, Node, :list, []) == []

      # The lines the README's troubleshooting section quotes: the CA derived from another
      # cookie did not sign the peer's certificate.
      assert Peers.wait_log(c, ~r/quic_dist cannot connect to .*BadSignature/) =~
               ~r/quic_dist cannot connect to '#{a.node}'.*this node does not trust the peer's certificate \(invalid peer certificate: BadSignature\).*the two nodes' cookies differ/

      assert Peers.wait_log(a, ~r/incoming connection failed.*BadSignature/) =~
               "the peer does not trust this node's certificate"
    end
  end

  describe "certificate mode" do
    setup do
      dir = Peers.tmp_dir()

      :ok =
        QuicDist.gen_certs(dir, [
          {"a", ["127.0.0.1", "localhost"]},
          {"b", "127.0.0.1"},
          {"elsewhere", ["10.9.9.9"]}
        ])

      %{certs: dir}
    end

    defp cert_args(dir, base) do
      [
        "-quic_dist_opt",
        "certfile",
        Path.join(dir, "#{base}.pem"),
        "keyfile",
        Path.join(dir, "#{base}_key.pem")
      ] ++
        ["cacertfile", Path.join(dir, "ca.pem")]
    end

    # -quic_dist_optfile: a file of Erlang terms.
    defp optfile_args(dir, base) do
      file = Path.join(dir, "#{base}.opts")

      term = [
        certfile: String.to_charlist(Path.join(dir, "#{base}.pem")),
        keyfile: String.to_charlist(Path.join(dir, "#{base}_key.pem")),
        cacertfile: String.to_charlist(Path.join(dir, "ca.pem"))
      ]

      File.write!(file, :io_lib.format(~c"~p.~n", [term]))
      ["-quic_dist_optfile", file]
    end

    # The `quic_dist` application environment, as sys.config sets it.
    defp sys_config_args(dir, base) do
      config = Path.join(dir, "#{base}_sys.config")

      term = [
        quic_dist: [
          certfile: String.to_charlist(Path.join(dir, "#{base}.pem")),
          keyfile: String.to_charlist(Path.join(dir, "#{base}_key.pem")),
          cacertfile: String.to_charlist(Path.join(dir, "ca.pem"))
        ]
      ]

      File.write!(config, :io_lib.format(~c"~p.~n", [term]))
      ["-config", config]
    end

    test "-quic_dist_opt on one node, -quic_dist_optfile on the other: they connect with certificates",
         %{certs: dir} do
      [a, b] =
        Peers.start_many([
          [prefix: "a", args: cert_args(dir, "a")],
          [prefix: "b", args: optfile_args(dir, "b")]
        ])

      {:ok, _} = Peers.call(a, QuicDistTest.Echo, :start, [])
      assert Peers.call(b, Node, :connect, [a.node]) == true

      assert %{node: node_a, echo: :hello} =
               Peers.call(b, GenServer, :call, [{QuicDistTest.Echo, a.node}, {:echo, :hello}])

      assert node_a == a.node

      assert {:ok, info} = Peers.call(b, QuicDist, :info, [a.node])
      assert info.mode == :certificates
      assert inspect(info.peer_certificate) =~ "CN=a"
      assert {:ok, %{mode: :certificates}} = Peers.call(a, QuicDist, :info, [b.node])
    end

    test "QuicDist.reload_certificates/0 after the files were renewed: new connections get the new certificate",
         %{certs: dir} do
      [a, b] =
        Peers.start_many([
          [prefix: "a", args: cert_args(dir, "a")],
          [prefix: "b", args: cert_args(dir, "b")]
        ])

      assert Peers.call(b, Node, :connect, [a.node]) == true
      {:ok, before} = Peers.call(b, QuicDist, :info, [a.node])
      refute inspect(before.peer_certificate) =~ "renewed.example"

      :ok = QuicDist.gen_certs(dir, [{"a", ["127.0.0.1", "localhost", "renewed.example"]}])
      assert Peers.call(a, QuicDist, :reload_certificates, []) == :ok
      assert Peers.call(b, Node, :disconnect, [a.node]) == true

      assert Peers.eventually(fn -> Peers.call(a, Node, :list, []) == [] end),
             "a still lists b after b disconnected"

      assert Peers.call(b, Node, :connect, [a.node]) == true
      {:ok, renewed} = Peers.call(b, QuicDist, :info, [a.node])
      assert inspect(renewed.peer_certificate) =~ "renewed.example"
    end

    # A plain `erl -config F` (or `iex --erl "-config F"`) does not load quic_dist before
    # distribution starts; the carrier loads it itself to read its environment.
    test "sys.config (-config) without a release: the node uses certificate mode", %{certs: dir} do
      [a] = Peers.start_many([[prefix: "a", args: cert_args(dir, "a")]])
      [b] = Peers.start_many([[prefix: "b", args: sys_config_args(dir, "b")]])
      assert Peers.call(b, Node, :connect, [a.node]) == true
      assert {:ok, %{mode: :certificates}} = Peers.call(b, QuicDist, :info, [a.node])
    end

    test "a certificate that does not name the node's host is refused", %{certs: dir} do
      [a, e] =
        Peers.start_many([
          [prefix: "a", args: cert_args(dir, "a")],
          [prefix: "e", args: cert_args(dir, "elsewhere")]
        ])

      # e claims to be e@127.0.0.1 but its certificate names 10.9.9.9 only.
      assert Peers.call(e, Node, :connect, [a.node]) == false
      assert Peers.call(a, Node, :list, []) == []

      assert Peers.wait_log(a, ~r/quic_dist refused .*not 127\.0\.0\.1/s) =~
               ~r/quic_dist refused 127\.0\.0\.1:\d+ claiming to be '?#{e.node}'?: its certificate/
    end
  end
end
