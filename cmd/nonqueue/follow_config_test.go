package main

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestFollowConfig: the [follower] and [[follow]] keys are validated, each
// error naming its key; after = "0s" means at once and is accepted.
func TestFollowConfig(t *testing.T) {
	t.Parallel()
	const base = "[primary]\nuser = \"nq\"\n[replica]\nuser = \"nq\"\n[topics]\nschema = \"app\"\ntable = \"TopicFilter\"\nmapped = true\n"
	rule := "[[follow]]\ntable = \"app.BlogPost\"\ntopic_column = \"topicFilterId\"\n"
	cases := []struct {
		name, body, key string // key "" = valid
	}{
		{"a followed table with after 0s loads", base + rule + "after = \"0s\"\nscope = \"partial\"\npriority = 3\n", ""},
		{"the indirect mapping loads", base + "[[follow]]\ntable = \"app.Comment\"\nkey_column = \"postId\"\nlookup = \"SELECT topicFilterId FROM app.BlogPost WHERE blogPostId = ?\"\n", ""},
		{"a table without schema", base + "[[follow]]\ntable = \"BlogPost\"\ntopic_column = \"t\"\n", "follow[0].table"},
		{"an injected table name", base + "[[follow]]\ntable = \"app.B; DROP\"\ntopic_column = \"t\"\n", "follow[0].table"},
		{"no column", base + "[[follow]]\ntable = \"app.BlogPost\"\n", "follow[0].topic_column"},
		{"both mappings", base + rule + "key_column = \"k\"\nlookup = \"SELECT 1 FROM t WHERE k = ?\"\n", "follow[0].topic_column"},
		{"a lookup that writes", base + "[[follow]]\ntable = \"app.C\"\nkey_column = \"k\"\nlookup = \"DELETE FROM app.BlogPost WHERE id = ?\"\n", "follow[0].lookup"},
		{"a lookup without ?", base + "[[follow]]\ntable = \"app.C\"\nkey_column = \"k\"\nlookup = \"SELECT 1\"\n", "follow[0].lookup"},
		{"a bad scope", base + rule + "scope = \"half\"\n", "follow[0].scope"},
		{"a negative after", base + rule + "after = \"-1s\"\n", "follow[0].after"},
		{"a bad follower name", base + "[follower]\nname = \"a b\"\n" + rule, "follower.name"},
		{"a bad source", base + "[follower]\nsource = \"elsewhere\"\n" + rule, "follower.source"},
		{"an explicit zero flush interval", base + "[follower]\nflush_interval = \"0s\"\n" + rule, "follower.flush_interval"},
		{"an explicit zero server id", base + "[follower]\nserver_id = 0\n" + rule, "follower.server_id"},
		{"following the topic table itself", base + "[[follow]]\ntable = \"app.TopicFilter\"\ntopic_column = \"topicFilterId\"\n", "follow[0].table"},
		{"a replica source without [replica]", "[primary]\nuser = \"nq\"\n" + rule, "follower.source"},
		{"an unknown key", base + rule + "topic_colum = \"x\"\n", "follow.topic_colum"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadConfig(writeFile(t, tc.body))
			if tc.key == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Follower.Name != "default" || c.Follower.FlushInterval != 200*time.Millisecond || c.Follower.ServerID == 0 || len(c.Follow) != 1 {
					t.Fatalf("decoded %+v %+v", c.Follower, c.Follow)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || !errors.Is(err, ErrConfig) {
				t.Fatalf("%v: want a configuration error on %s", err, tc.key)
			}
			if ce.Key != tc.key && !strings.HasPrefix(ce.Key, tc.key) {
				t.Fatalf("error on %q, want %q: %v", ce.Key, tc.key, err)
			}
		})
	}
}
