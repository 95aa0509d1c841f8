defmodule QuicDistTest.CountsFormatter do
  @moduledoc """
  An ExUnit formatter that writes `PASSED FAILED SKIPPED` on one line to the file named by the
  environment variable `QUIC_DIST_TEST_COUNTS` when the suite finishes (scripts/run-mix-tests.sh
  and scripts/run-elixir-tests.sh read it; the plain-ExUnit suite in tests/elixir loads this file). Skipped and excluded tests count as skipped; invalid tests (a failed
  `setup_all`) count as failed.
  """
  use GenServer

  @impl true
  def init(_opts), do: {:ok, %{passed: 0, failed: 0, skipped: 0}}

  @impl true
  def handle_cast({:test_finished, %ExUnit.Test{state: state}}, counts) do
    key =
      case state do
        nil -> :passed
        {:failed, _} -> :failed
        {:invalid, _} -> :failed
        {:skipped, _} -> :skipped
        {:excluded, _} -> :skipped
      end

    {:noreply, Map.update!(counts, key, &(&1 + 1))}
  end

  def handle_cast(
        {:module_finished, %ExUnit.TestModule{state: {:failed, _}, tests: tests}},
        counts
      ) do
    # setup_all failed: its tests were reported as invalid already (counted above) in ExUnit
    # 1.14; if a module has no tests reported, count one failure so it is not silent.
    {:noreply, if(tests == [], do: Map.update!(counts, :failed, &(&1 + 1)), else: counts)}
  end

  def handle_cast({:suite_finished, _times}, counts) do
    write(counts)
    {:noreply, counts}
  end

  def handle_cast(_event, counts), do: {:noreply, counts}

  defp write(%{passed: p, failed: f, skipped: s}) do
    case System.get_env("QUIC_DIST_TEST_COUNTS") do
      nil -> :ok
      "" -> :ok
      file -> File.write!(file, "#{p} #{f} #{s}\n")
    end
  end
end
