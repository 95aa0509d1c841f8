defmodule QuicDistTest.CountsFormatter do
  @moduledoc """
  An ExUnit formatter that writes `PASSED FAILED SKIPPED` on one line to the file named by the
  environment variable `QUIC_DIST_TEST_COUNTS` when the suite finishes (scripts/run-mix-tests.sh
  and scripts/run-elixir-tests.sh read it; the plain-ExUnit suite in tests/elixir loads this
  file). Skipped and excluded tests count as skipped; invalid tests (a failed `setup_all`)
  count as failed. The failed tests are named, one per line, in the same file with `.failures`
  in place of `.counts`, so that the test runner can list them on its last lines.
  """
  use GenServer

  @impl true
  def init(_opts), do: {:ok, %{passed: 0, failed: 0, skipped: 0, failures: []}}

  @impl true
  def handle_cast({:test_finished, %ExUnit.Test{state: state} = test}, counts) do
    key =
      case state do
        nil -> :passed
        {:failed, _} -> :failed
        {:invalid, _} -> :failed
        {:skipped, _} -> :skipped
        {:excluded, _} -> :skipped
      end

    counts = Map.update!(counts, key, &(&1 + 1))
    {:noreply, if(key == :failed, do: add_failure(counts, test), else: counts)}
  end

  def handle_cast(
        {:module_finished, %ExUnit.TestModule{state: {:failed, _}, tests: tests, name: name}},
        counts
      ) do
    # setup_all failed: its tests were reported as invalid already (counted above) in ExUnit
    # 1.14; if a module has no tests reported, count one failure so it is not silent.
    counts =
      if tests == [] do
        counts
        |> Map.update!(:failed, &(&1 + 1))
        |> Map.update!(:failures, &["#{inspect(name)}: setup_all failed" | &1])
      else
        counts
      end

    {:noreply, counts}
  end

  def handle_cast({:suite_finished, _times}, counts) do
    write(counts)
    {:noreply, counts}
  end

  def handle_cast(_event, counts), do: {:noreply, counts}

  # "Module: test name (file:line): the start of the error".
  defp add_failure(counts, %ExUnit.Test{} = test) do
    why =
      case test.state do
        {:failed, [{kind, reason, stack} | _]} ->
          # An assertion's banner starts with an empty line: keep its first three lines.
          Exception.format_banner(kind, reason, stack)
          |> String.split("\n")
          |> Enum.map(&String.trim/1)
          |> Enum.reject(&(&1 == ""))
          |> Enum.take(3)
          |> Enum.join(" ")

        {:invalid, module} ->
          "setup_all of #{inspect(module.name)} failed"

        other ->
          inspect(other)
      end

    where = "#{Path.relative_to_cwd(test.tags[:file] || "?")}:#{test.tags[:line]}"
    line = "#{inspect(test.module)}: #{test.name} (#{where}): #{String.slice(why, 0, 300)}"
    Map.update!(counts, :failures, &[line | &1])
  end

  defp write(%{passed: p, failed: f, skipped: s, failures: failures}) do
    case System.get_env("QUIC_DIST_TEST_COUNTS") do
      nil ->
        :ok

      "" ->
        :ok

      file ->
        failures_file = Path.rootname(file) <> ".failures"
        File.rm(failures_file)

        if failures != [] do
          File.write!(failures_file, Enum.map(Enum.reverse(failures), &[&1, "\n"]))
        end

        File.write!(file, "#{p} #{f} #{s}\n")
    end
  end
end
