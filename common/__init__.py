"""hftfarm's leaf package: config-schema primitives (common.schema) and the stage status-block
layout (common.status). Imported by every layer; imports nothing from the project."""
