package deploytest

import (
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/membudget"
)

// The memory budget (deploy/README.md, "Memory") is package membudget's;
// these names keep the manifests' tests reading as before.

// MemoryBudget is what the configuration lets decryptd hold, in bytes
// (membudget.Budget).
func MemoryBudget(c *config.Config) int64 { return membudget.Budget(c) }

// GoMemLimitMiB is the budget rounded up to whole MiB (GOMEMLIMIT=<n>MiB).
func GoMemLimitMiB(c *config.Config) int64 { return membudget.GoMemLimitMiB(c) }

// MemoryLimit is the container's memory limit in bytes: the budget times
// membudget.LimitHeadroom, rounded up to membudget.LimitStep.
func MemoryLimit(c *config.Config) int64 { return membudget.ContainerLimit(c) }
