#!/usr/bin/env bash
# The router tests' schemas here (Istio VirtualService and DestinationRule, Gateway API
# HTTPRoute) are regenerated, with their registry packages and versions, by the one schema
# generator of the repository, which also writes the manifests test's schemas.
exec "$(cd "$(dirname "$0")" && pwd)/../../../tests/testdata/schemas/extract.sh" "$@"
