package auth

// Match reports whether channel matches pattern: '*' matches any run of
// characters (including none, and including ':' and '/'), every other
// character matches itself. "chat:*" matches "chat:lobby" and
// "chat:a/b"; "*" matches every channel. At worst O(len(pattern) x
// len(channel)) with no recursion, so no input makes it blow up (channels
// are client input, at most 255 bytes).
func Match(pattern, channel string) bool {
	p, c := 0, 0
	star, mark := -1, 0
	for c < len(channel) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, c
			p++
		case p < len(pattern) && pattern[p] == channel[c]:
			p++
			c++
		case star >= 0:
			p = star + 1
			mark++
			c = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// MatchAny reports whether channel matches one of patterns.
func MatchAny(patterns []string, channel string) bool {
	for _, p := range patterns {
		if Match(p, channel) {
			return true
		}
	}
	return false
}
