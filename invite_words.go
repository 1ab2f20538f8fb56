// The invitation code and its word lists (SPEC.md 7.1).
//
// Flow: newInviteCode draws a 6-digit nameplate and two random bytes, which
// pick pgpEven[b1] and pgpOdd[b2]; parseInviteCode reads what a person
// typed back into the nameplate and the canonical "even-odd" password,
// naming the closest word when one is unknown. SPEC.md 7.1 prints both
// lists and their SHA-256, and a test checks they match these.
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The code (SPEC.md 7.1): NNNNNN-even-odd. The nameplate is public (a
// rendezvous channel, 7.2); the two words are the password, 8 bits each.
const (
	inviteNameplates      = 1000000 // 000000..999999
	inviteNameplateDigits = 6       // in the code
	inviteCodeParts       = 3       // nameplate, even word, odd word
	// inviteNameplateDraws is the largest multiple of inviteNameplates
	// below 2^32: a uniform uint32 under it, mod inviteNameplates, is
	// uniform.
	inviteNameplateDraws = (1 << 32) / inviteNameplates * inviteNameplates
)

// Errors of parseInviteCode; each says what a person should fix.
var (
	errInviteCodeForm      = errors.New("invite: the code has the form 123456-word-word")
	errInviteCodeNameplate = errors.New("invite: the code must start with 6 digits")
	errInviteCodeWord      = errors.New("invite: unknown word")
)

// parseInviteCode reads what a person typed: case, surrounding spaces and
// any run of spaces and dashes between the parts are forgiven; unknown
// words get a suggestion.
// password is the canonical "even-odd" in lowercase.
func parseInviteCode(s string) (nameplate uint32, password string, err error) {
	parts := strings.FieldsFunc(strings.ToLower(strings.TrimSpace(s)), func(r rune) bool { return r == '-' || r == ' ' })
	if len(parts) != inviteCodeParts {
		return 0, "", fmt.Errorf("%w: %q has %d parts, want 3", errInviteCodeForm, s, len(parts))
	}
	np := parts[0]
	if len(np) != inviteNameplateDigits || strings.Trim(np, "0123456789") != "" {
		return 0, "", fmt.Errorf("%w, not %q", errInviteCodeNameplate, parts[0])
	}
	n, _ := strconv.Atoi(np)
	if _, err := wordIndex(&pgpEven, &pgpOdd, parts[1], "first"); err != nil {
		return 0, "", err
	}
	if _, err := wordIndex(&pgpOdd, &pgpEven, parts[2], "second"); err != nil {
		return 0, "", err
	}
	return uint32(n), parts[1] + "-" + parts[2], nil
}

// wordIndex finds w in list; otherwise the error names the closest word,
// or says that w belongs to the other position.
func wordIndex(list, other *[256]string, w, pos string) (int, error) {
	for i, x := range list {
		if x == w {
			return i, nil
		}
	}
	for _, x := range other {
		if x == w {
			return -1, fmt.Errorf("%w %q as the %s word: it is a word for the other position (swapped?)", errInviteCodeWord, w, pos)
		}
	}
	best, bestD := "", -1
	for _, x := range list {
		if d := editDistance(w, x); bestD < 0 || d < bestD {
			best, bestD = x, d
		}
	}
	return -1, fmt.Errorf("%w %q as the %s word (did you mean %q?)", errInviteCodeWord, w, pos, best)
}

// editDistance is the Levenshtein distance; words are short.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// formatInviteCode is the canonical code text; it is also CPace's PRS.
func formatInviteCode(nameplate uint32, password string) string {
	return fmt.Sprintf("%06d-%s", nameplate, password)
}

// newInviteCode draws a nameplate uniformly from 0..999999 (rejection
// sampling, bounded: all but 0.02% of the draws succeed) and two words.
func newInviteCode(rand io.Reader) (uint32, string, error) {
	var b [6]byte
	for range 64 {
		if _, err := io.ReadFull(rand, b[:]); err != nil {
			return 0, "", fmt.Errorf("invite: random code: %w", err)
		}
		if n := binary.BigEndian.Uint32(b[:4]); n < inviteNameplateDraws {
			return n % inviteNameplates, pgpEven[b[4]] + "-" + pgpOdd[b[5]], nil
		}
	}
	return 0, "", errors.New("invite: random code: the random source is biased")
}

// The PGP word list, lowercased (SPEC.md 7.1): pgpEven for the first word,
// pgpOdd for the second, indexed by a random byte.
var pgpEven = [256]string{
	"aardvark", "absurd", "accrue", "acme", "adrift", "adult", "afflict", "ahead",
	"aimless", "algol", "allow", "alone", "ammo", "ancient", "apple", "artist",
	"assume", "athens", "atlas", "aztec", "baboon", "backfield", "backward", "banjo",
	"beaming", "bedlamp", "beehive", "beeswax", "befriend", "belfast", "berserk", "billiard",
	"bison", "blackjack", "blockade", "blowtorch", "bluebird", "bombast", "bookshelf", "brackish",
	"breadline", "breakup", "brickyard", "briefcase", "burbank", "button", "buzzard", "cement",
	"chairlift", "chatter", "checkup", "chisel", "choking", "chopper", "christmas", "clamshell",
	"classic", "classroom", "cleanup", "clockwork", "cobra", "commence", "concert", "cowbell",
	"crackdown", "cranky", "crowfoot", "crucial", "crumpled", "crusade", "cubic", "dashboard",
	"deadbolt", "deckhand", "dogsled", "dragnet", "drainage", "dreadful", "drifter", "dropper",
	"drumbeat", "drunken", "dupont", "dwelling", "eating", "edict", "egghead", "eightball",
	"endorse", "endow", "enlist", "erase", "escape", "exceed", "eyeglass", "eyetooth",
	"facial", "fallout", "flagpole", "flatfoot", "flytrap", "fracture", "framework", "freedom",
	"frighten", "gazelle", "geiger", "glitter", "glucose", "goggles", "goldfish", "gremlin",
	"guidance", "hamlet", "highchair", "hockey", "indoors", "indulge", "inverse", "involve",
	"island", "jawbone", "keyboard", "kickoff", "kiwi", "klaxon", "locale", "lockup",
	"merit", "minnow", "miser", "mohawk", "mural", "music", "necklace", "neptune",
	"newborn", "nightbird", "oakland", "obtuse", "offload", "optic", "orca", "payday",
	"peachy", "pheasant", "physique", "playhouse", "pluto", "preclude", "prefer", "preshrunk",
	"printer", "prowler", "pupil", "puppy", "python", "quadrant", "quiver", "quota",
	"ragtime", "ratchet", "rebirth", "reform", "regain", "reindeer", "rematch", "repay",
	"retouch", "revenge", "reward", "rhythm", "ribcage", "ringbolt", "robust", "rocker",
	"ruffled", "sailboat", "sawdust", "scallion", "scenic", "scorecard", "scotland", "seabird",
	"select", "sentence", "shadow", "shamrock", "showgirl", "skullcap", "skydive", "slingshot",
	"slowdown", "snapline", "snapshot", "snowcap", "snowslide", "solo", "southward", "soybean",
	"spaniel", "spearhead", "spellbind", "spheroid", "spigot", "spindle", "spyglass", "stagehand",
	"stagnate", "stairway", "standard", "stapler", "steamship", "sterling", "stockman", "stopwatch",
	"stormy", "sugar", "surmount", "suspense", "sweatband", "swelter", "tactics", "talon",
	"tapeworm", "tempest", "tiger", "tissue", "tonic", "topmost", "tracker", "transit",
	"trauma", "treadmill", "trojan", "trouble", "tumor", "tunnel", "tycoon", "uncut",
	"unearth", "unwind", "uproot", "upset", "upshot", "vapor", "village", "virus",
	"vulcan", "waffle", "wallet", "watchword", "wayside", "willow", "woodlark", "zulu",
}

var pgpOdd = [256]string{
	"adroitness", "adviser", "aftermath", "aggregate", "alkali", "almighty", "amulet", "amusement",
	"antenna", "applicant", "apollo", "armistice", "article", "asteroid", "atlantic", "atmosphere",
	"autopsy", "babylon", "backwater", "barbecue", "belowground", "bifocals", "bodyguard", "bookseller",
	"borderline", "bottomless", "bradbury", "bravado", "brazilian", "breakaway", "burlington", "businessman",
	"butterfat", "camelot", "candidate", "cannonball", "capricorn", "caravan", "caretaker", "celebrate",
	"cellulose", "certify", "chambermaid", "cherokee", "chicago", "clergyman", "coherence", "combustion",
	"commando", "company", "component", "concurrent", "confidence", "conformist", "congregate", "consensus",
	"consulting", "corporate", "corrosion", "councilman", "crossover", "crucifix", "cumbersome", "customer",
	"dakota", "decadence", "december", "decimal", "designing", "detector", "detergent", "determine",
	"dictator", "dinosaur", "direction", "disable", "disbelief", "disruptive", "distortion", "document",
	"embezzle", "enchanting", "enrollment", "enterprise", "equation", "equipment", "escapade", "eskimo",
	"everyday", "examine", "existence", "exodus", "fascinate", "filament", "finicky", "forever",
	"fortitude", "frequency", "gadgetry", "galveston", "getaway", "glossary", "gossamer", "graduate",
	"gravity", "guitarist", "hamburger", "hamilton", "handiwork", "hazardous", "headwaters", "hemisphere",
	"hesitate", "hideaway", "holiness", "hurricane", "hydraulic", "impartial", "impetus", "inception",
	"indigo", "inertia", "infancy", "inferno", "informant", "insincere", "insurgent", "integrate",
	"intention", "inventive", "istanbul", "jamaica", "jupiter", "leprosy", "letterhead", "liberty",
	"maritime", "matchmaker", "maverick", "medusa", "megaton", "microscope", "microwave", "midsummer",
	"millionaire", "miracle", "misnomer", "molasses", "molecule", "montana", "monument", "mosquito",
	"narrative", "nebula", "newsletter", "norwegian", "october", "ohio", "onlooker", "opulent",
	"orlando", "outfielder", "pacific", "pandemic", "pandora", "paperweight", "paragon", "paragraph",
	"paramount", "passenger", "pedigree", "pegasus", "penetrate", "perceptive", "performance", "pharmacy",
	"phonetic", "photograph", "pioneer", "pocketful", "politeness", "positive", "potato", "processor",
	"provincial", "proximate", "puberty", "publisher", "pyramid", "quantity", "racketeer", "rebellion",
	"recipe", "recover", "repellent", "replica", "reproduce", "resistor", "responsive", "retraction",
	"retrieval", "retrospect", "revenue", "revival", "revolver", "sandalwood", "sardonic", "saturday",
	"savagery", "scavenger", "sensation", "sociable", "souvenir", "specialist", "speculate", "stethoscope",
	"stupendous", "supportive", "surrender", "suspicious", "sympathy", "tambourine", "telephone", "therapist",
	"tobacco", "tolerance", "tomorrow", "torpedo", "tradition", "travesty", "trombonist", "truncated",
	"typewriter", "ultimate", "undaunted", "underfoot", "unicorn", "unify", "universe", "unravel",
	"upcoming", "vacancy", "vagabond", "vertigo", "virginia", "visitor", "vocalist", "voyager",
	"warranty", "waterloo", "whimsical", "wichita", "wilmington", "wyoming", "yesteryear", "yucatan",
}
