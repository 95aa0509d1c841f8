[
  inputs: [
    "{mix,.formatter}.exs",
    "{lib,mix,test}/**/*.{ex,exs}",
    "examples/*/{mix,.formatter}.exs",
    "examples/*/{lib,config,test}/**/*.{ex,exs}"
  ]
]
