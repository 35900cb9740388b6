package partition

// RolloutReference is rolloutReference, for the tests outside the package.
func (l Left) RolloutReference(candidates []int, mix []float64, futures int, seed uint64) []int {
	return l.rolloutReference(candidates, mix, futures, seed)
}
