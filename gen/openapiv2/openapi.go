// Package openapiv2 embeds the OpenAPI document that scripts/generate writes
// beside this file. This file is the only hand-written one under gen/.
package openapiv2

import _ "embed"

// JSON is the OpenAPI v2 document of the REST gateway.
//
//go:embed tokenbroker.swagger.json
var JSON []byte
