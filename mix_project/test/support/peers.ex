defmodule QuicDistTest.Peers do
  @moduledoc """
  Real BEAM nodes for the tests, distributed over QUIC.

  Started with `:peer` (OTP 25) and controlled over their standard I/O, so the test VM itself
  is not distributed. Each node gets `-proto_dist quic` and, with `-pa`, the ebin that Mix
  built for this test run (`_build/test/lib/quic_dist/ebin`: the carrier, `QuicDist` and the
  test support modules) and Elixir's ebin. Its logger writes to a file of its own (see
  `log/1`), so assertions can look for the lines the README's troubleshooting section quotes
  and the test output stays readable.

  `start/1` registers every node with the calling test (`ExUnit.Callbacks.on_exit/1`): it is
  stopped, and its OS process killed if it does not go, when the test ends. A node also halts
  by itself when the test VM goes away (its control pipe closes).
  """
  import ExUnit.Callbacks, only: [on_exit: 1]

  @boot_timeout 30_000
  @call_timeout 30_000

  defstruct [:pid, :node, :os_pid, :name, :log]

  @doc "The ebin of the quic_dist application that Mix built for this run."
  def ebin, do: Path.join(Mix.Project.app_path(), "ebin")

  @doc "A cookie unique to this test run (other runs may share this machine's epmd)."
  def cookie do
    case :persistent_term.get({__MODULE__, :cookie}, nil) do
      nil ->
        c =
          "mxt_#{System.pid()}_#{:erlang.unique_integer([:positive])}_#{:rand.uniform(1_000_000_000)}"

        :persistent_term.put({__MODULE__, :cookie}, c)
        c

      c ->
        c
    end
  end

  @doc "A node name (the part before @) unique to this run."
  def unique_name(prefix),
    do: "mxt_#{prefix}_#{System.pid()}_#{:erlang.unique_integer([:positive])}"

  @doc """
  Starts a node. Options: `:prefix` (of the unique name), `:cookie` (default `cookie/0`),
  `:args` (extra erl arguments, strings), `:log_dir` (default a temporary directory),
  `:proto_dist` (`"quic"`, the default, or `"quic6"`), `:host` (of the node name, default
  `"127.0.0.1"`).
  """
  def start(opts \\ []) do
    peer = launch(Keyword.put_new_lazy(opts, :log_dir, &tmp_dir/0))
    on_exit(fn -> stop(peer) end)
    peer
  end

  @doc "Starts several nodes in parallel (start-up is mostly waiting)."
  def start_many(opts_list) do
    log_dir = tmp_dir()
    # Fix the run's cookie here, not in the tasks: two tasks calling cookie/0 for the first time
    # at once would each make one, and the nodes could not connect (BadSignature).
    _ = cookie()

    opts_list
    |> Enum.map(fn opts ->
      Task.async(fn -> launch(Keyword.put_new(opts, :log_dir, log_dir)) end)
    end)
    |> Enum.map(&Task.await(&1, @boot_timeout + 5_000))
    |> Enum.map(fn peer ->
      on_exit(fn -> stop(peer) end)
      peer
    end)
  end

  defp launch(opts) do
    name = unique_name(Keyword.get(opts, :prefix, "n"))
    log_dir = Keyword.fetch!(opts, :log_dir)
    File.mkdir_p!(log_dir)
    log = Path.join(log_dir, "#{name}.log")
    elixir_ebin = Path.join(to_string(:code.lib_dir(:elixir)), "ebin")
    proto_dist = Keyword.get(opts, :proto_dist, "quic")
    logger = ~s([{handler, default, logger_std_h, \#{config => \#{file => "#{log}"}}}])

    args =
      ["-pa", ebin(), "-pa", elixir_ebin, "-proto_dist", proto_dist] ++
        ["-setcookie", Keyword.get(opts, :cookie, cookie())] ++
        ["-kernel", "logger", logger, "-kernel", "logger_level", "info"] ++
        Keyword.get(opts, :args, [])

    {:ok, pid, node} =
      :peer.start(%{
        name: String.to_charlist(name),
        host: String.to_charlist(Keyword.get(opts, :host, "127.0.0.1")),
        longnames: true,
        connection: :standard_io,
        wait_boot: @boot_timeout,
        args: Enum.map(args, &String.to_charlist/1)
      })

    os_pid = :peer.call(pid, :os, :getpid, [], @call_timeout)
    peer = %__MODULE__{pid: pid, node: node, os_pid: to_string(os_pid), name: name, log: log}
    # The carrier really is the one asked for: nothing else would work with these flags anyway.
    expected = String.to_charlist(proto_dist)
    {:ok, [[^expected]]} = call(peer, :init, :get_argument, [:proto_dist])
    peer
  end

  @doc "Runs `apply(m, f, a)` on the node."
  def call(%__MODULE__{pid: pid}, m, f, a, timeout \\ @call_timeout),
    do: :peer.call(pid, m, f, a, timeout)

  @doc "The node's log so far (flushed first)."
  def log(%__MODULE__{log: log} = peer) do
    _ = catch_exit(fn -> call(peer, :logger_std_h, :filesync, [:default], 5_000) end)

    case File.read(log) do
      {:ok, text} -> text
      {:error, _} -> ""
    end
  end

  @doc "Waits (bounded) until the node's log matches `pattern`; returns the log."
  def wait_log(peer, pattern, timeout \\ 10_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    wait_log(peer, pattern, deadline, nil)
  end

  defp wait_log(peer, pattern, deadline, _last) do
    text = log(peer)

    cond do
      text =~ pattern -> text
      System.monotonic_time(:millisecond) > deadline -> text
      true -> Process.sleep(200) && wait_log(peer, pattern, deadline, text)
    end
  end

  @doc "Stops the node and makes sure its OS process is gone (SIGKILL after 5 s)."
  def stop(%__MODULE__{pid: pid, os_pid: os_pid, name: name}) do
    _ = catch_exit(fn -> :peer.stop(pid) end)
    ensure_gone(os_pid, name, 50)
  end

  defp ensure_gone(os_pid, name, tries) do
    cond do
      not ours?(os_pid, name) ->
        :ok

      tries == 0 ->
        _ = System.cmd("kill", ["-9", os_pid], stderr_to_stdout: true)
        :ok

      true ->
        Process.sleep(100)
        ensure_gone(os_pid, name, tries - 1)
    end
  end

  # True while os_pid is a process whose command line names our node (pids get reused).
  defp ours?(os_pid, name) do
    case File.read("/proc/#{os_pid}/cmdline") do
      {:ok, cmdline} -> String.contains?(cmdline, name)
      {:error, _} -> false
    end
  end

  @doc """
  OS pids of the processes (other than this VM) whose command line contains all of `parts`:
  used with node names unique to this run, to find what a test started and could not stop.
  """
  def os_pids_matching(parts) when is_list(parts) do
    me = System.pid()

    for dir <- Path.wildcard("/proc/[0-9]*"),
        pid = Path.basename(dir),
        pid != me,
        {:ok, cmdline} <- [File.read(Path.join(dir, "cmdline"))],
        Enum.all?(parts, &String.contains?(cmdline, &1)),
        do: pid
  end

  @doc "SIGTERM, then (after up to 3 s) SIGKILL, to the processes `os_pids_matching(parts)` finds."
  def kill_matching(parts) do
    case os_pids_matching(parts) do
      [] ->
        :ok

      pids ->
        _ = System.cmd("kill", pids, stderr_to_stdout: true)

        case eventually(fn -> os_pids_matching(parts) == [] end, 3_000, 100) do
          true -> :ok
          _ -> System.cmd("kill", ["-9" | os_pids_matching(parts)], stderr_to_stdout: true)
        end

        :ok
    end
  end

  @doc "A fresh temporary directory, deleted when the test ends."
  def tmp_dir do
    dir =
      Path.join(
        System.tmp_dir!(),
        "quic_dist_mix_test_#{System.pid()}_#{:erlang.unique_integer([:positive])}"
      )

    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    dir
  end

  defp catch_exit(fun) do
    fun.()
  catch
    :exit, reason -> {:exit, reason}
  end

  @doc "Waits (bounded) until `fun` returns a truthy value; returns it, or the last value."
  def eventually(fun, timeout \\ 10_000, interval \\ 200) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_eventually(fun, deadline, interval)
  end

  defp do_eventually(fun, deadline, interval) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      result ->
        if System.monotonic_time(:millisecond) > deadline do
          result
        else
          Process.sleep(interval)
          do_eventually(fun, deadline, interval)
        end
    end
  end
end
