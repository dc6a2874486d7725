"""Run configuration: schema and validation, the dotted overlay, resolution of a grid."""
