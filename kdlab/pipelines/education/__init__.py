"""Education distillation (Feng et al., arXiv:2311.13811): the student is taught in grades,
growing a stage per grade and learning one more group of classes from that group's teacher.

Importing the package registers the `education` pipeline."""

from kdlab.pipelines.education import pipeline  # noqa: F401  (registers the pipeline)
