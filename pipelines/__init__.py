"""The Chromify DAG for Kubeflow Pipelines v2 / Vertex AI Pipelines, and how to compile, run and submit it."""
