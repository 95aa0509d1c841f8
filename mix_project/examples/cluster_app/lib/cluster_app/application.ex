defmodule ClusterApp.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    children = [
      ClusterApp.Counter,
      {ClusterApp.Joiner, ClusterApp.Joiner.peers_from_env()}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: ClusterApp.Supervisor)
  end
end
