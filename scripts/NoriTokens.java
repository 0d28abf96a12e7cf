// Expected Korean tokens from Lucene's Nori (KoreanAnalyzer: mecab-ko-dic, compounds
// decompounded with DISCARD, particles/endings dropped by Nori's default stop tags).
// Reads one text per line on stdin, prints `text<TAB>token token ...` per line.
// Run by scripts/nori-fixture.sh, which regenerates tests/fixtures/nori-tokens.tsv.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.apache.lucene.analysis.TokenStream;
import org.apache.lucene.analysis.ko.KoreanAnalyzer;
import org.apache.lucene.analysis.tokenattributes.CharTermAttribute;

public class NoriTokens {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        try (KoreanAnalyzer analyzer = new KoreanAnalyzer()) {
            String line;
            while ((line = in.readLine()) != null) {
                if (line.isBlank() || line.startsWith("#")) continue;
                List<String> tokens = new ArrayList<>();
                try (TokenStream ts = analyzer.tokenStream("f", line)) {
                    CharTermAttribute term = ts.addAttribute(CharTermAttribute.class);
                    ts.reset();
                    while (ts.incrementToken()) tokens.add(term.toString());
                    ts.end();
                }
                System.out.println(line + "\t" + String.join(" ", tokens));
            }
        }
    }
}
