"""The programs behind the `ngraphics` CLI verbs (installed as `ngraphics.apps`). Thin: logic lives in the library."""
