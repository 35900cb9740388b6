// Package config is an API package; importing the wire contract is allowed.
package config

import gpuapi "github.com/tessera-gpu/tessera/api/gpu"

// Group is the config group, named after the driver.
const Group = "config." + gpuapi.Driver
