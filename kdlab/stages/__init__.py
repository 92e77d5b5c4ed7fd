"""Stage plumbing shared by every recipe: the run context, building data/models/methods from
configs, one training stage in the run store (`run_stage`), teachers trained once and reused,
and running an experiment with its pipeline. Recipes live in `kdlab.pipelines`."""
