"""`kdlab tune`: an Optuna study over a config's `tune:` section; every trial's runs are
ordinary runs in the store, named `<study>-t<NNN>`."""
