"""One module per paper reproduction: ``Config``, ``run(model, cfg) -> Result``, ``figures``, ``check``."""
