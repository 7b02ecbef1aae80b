#!/bin/sh
# The container's entry point. The app looks for its world models under $WORLD_MODELS_ROOT (the volume),
# in models/ first. A volume without a models/ of its own gets a link to the model shipped in the image,
# so the Race page's AI works from the first start and follows the image when it is upgraded; a models/
# folder (or link) already in the volume is left as it is.
set -e
root="${WORLD_MODELS_ROOT:-/data}"
shipped=/app/models
if [ -d "$shipped" ] && [ ! -e "$root/models" ] && [ ! -L "$root/models" ]; then
    ln -s "$shipped" "$root/models" 2>/dev/null \
        || echo "note: $root is not writable by uid $(id -u): the shipped world model is not linked into it" >&2
fi
exec "$@"
