defmodule QuicDist.MixTasksTest do
  use ExUnit.Case, async: false

  alias QuicDistTest.Peers

  @mix_project Path.expand("..", __DIR__)

  setup do
    Mix.shell(Mix.Shell.Process)
    on_exit(fn -> Mix.shell(Mix.Shell.IO) end)
    :ok
  end

  describe "mix quic_dist.gen.certs" do
    test "writes the CA and one certificate and key per node, naming the given hosts" do
      dir = Path.join(Peers.tmp_dir(), "certs")

      Mix.Task.rerun("quic_dist.gen.certs", [
        dir,
        "app1",
        "app1.example.com,10.0.0.1",
        "app2",
        "127.0.0.1"
      ])

      assert_received {:mix_shell, :info, [summary]}
      assert summary =~ "quic_dist certificates in #{dir}"
      assert_received {:mix_shell, :info, ["  app1.pem names app1.example.com, 10.0.0.1"]}

      files = dir |> File.ls!() |> Enum.sort()
      assert files == ~w(app1.pem app1_key.pem app2.pem app2_key.pem ca.pem ca_key.pem)

      for key <- ~w(ca_key.pem app1_key.pem app2_key.pem) do
        assert %File.Stat{mode: mode} = File.stat!(Path.join(dir, key))
        assert Bitwise.band(mode, 0o077) == 0, "#{key} is readable by others"
      end

      # The certificate names the hosts and chains to the CA.
      [{:Certificate, der, _}] = :public_key.pem_decode(File.read!(Path.join(dir, "app1.pem")))
      [{:Certificate, ca_der, _}] = :public_key.pem_decode(File.read!(Path.join(dir, "ca.pem")))
      otp = :public_key.pkix_decode_cert(der, :otp)
      ca = :public_key.pkix_decode_cert(ca_der, :otp)
      assert :public_key.pkix_is_issuer(otp, ca)
      assert {:ok, _} = :public_key.pkix_path_validation(ca, [der], [])

      names = for {:Extension, {2, 5, 29, 17}, _, alt} <- extensions(otp), name <- alt, do: name

      assert {:dNSName, ~c"app1.example.com"} in names
      assert {:iPAddress, [10, 0, 0, 1]} in names or {:iPAddress, <<10, 0, 0, 1>>} in names

      # A second run reuses the CA, so certificates for new nodes join the same cluster.
      ca_before = File.read!(Path.join(dir, "ca.pem"))
      Mix.Task.rerun("quic_dist.gen.certs", [dir, "app3", "app3.example.com"])
      assert File.read!(Path.join(dir, "ca.pem")) == ca_before
      assert File.exists?(Path.join(dir, "app3.pem"))
    end

    test "a wrong command line raises with the usage" do
      assert_raise Mix.Error, ~r/usage: mix quic_dist.gen.certs DIR NAME HOSTS/, fn ->
        Mix.Task.rerun("quic_dist.gen.certs", ["only_a_dir"])
      end

      assert_raise Mix.Error, ~r/usage/, fn ->
        Mix.Task.rerun("quic_dist.gen.certs", ["dir", "name_without_hosts"])
      end
    end

    test "QuicDist.gen_certs/2 reports bad input as errors" do
      dir = Peers.tmp_dir()
      assert {:error, {:no_hosts, "x"}} = QuicDist.gen_certs(dir, [{"x", []}])
      assert {:error, {:bad_node_spec, :oops}} = QuicDist.gen_certs(dir, [:oops])
      assert :ok = QuicDist.gen_certs(dir, [{:node1, ~c"127.0.0.1"}])
      assert File.exists?(Path.join(dir, "node1.pem"))
    end
  end

  describe "compile.quic_dist_nif" do
    @tag timeout: 120_000
    test "without cargo, compiling fails with a message that says what to install" do
      build = Path.join(Peers.tmp_dir(), "build")

      {output, status} =
        System.cmd("mix", ["compile"],
          cd: @mix_project,
          stderr_to_stdout: true,
          env: [
            {"MIX_ENV", "dev"},
            {"MIX_BUILD_PATH", build},
            {"CARGO", "/nonexistent/cargo"}
          ]
        )

      assert status != 0, output
      assert output =~ "quic_dist: cargo not found (looked for CARGO=/nonexistent/cargo)"
      assert output =~ "rustup"
      refute File.exists?(Path.join(build, "lib/quic_dist/priv/quic_dist_nif.so"))
    end
  end

  defp extensions(otp_cert) do
    # #'OTPCertificate'{tbsCertificate = #'OTPTBSCertificate'{extensions = Exts}}
    tbs = elem(otp_cert, 1)
    elem(tbs, tuple_size(tbs) - 1)
  end
end
