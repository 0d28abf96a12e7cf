package emporium.search;

import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.analysis.TokenStream;
import org.apache.lucene.analysis.Tokenizer;
import org.apache.lucene.analysis.ko.KoreanAnalyzer;
import org.apache.lucene.analysis.ko.KoreanNumberFilter;
import org.apache.lucene.analysis.ko.KoreanPartOfSpeechStopFilter;
import org.apache.lucene.analysis.ko.KoreanReadingFormFilter;
import org.apache.lucene.analysis.ko.KoreanTokenizer;
import org.apache.lucene.analysis.ko.POS;
import org.apache.lucene.analysis.ko.dict.UserDictionary;
import org.opensearch.OpenSearchException;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.index.IndexSettings;
import org.opensearch.index.analysis.AbstractIndexAnalyzerProvider;
import org.opensearch.index.analysis.AbstractTokenFilterFactory;
import org.opensearch.index.analysis.AbstractTokenizerFactory;
import org.opensearch.index.analysis.Analysis;
import org.opensearch.index.analysis.AnalyzerProvider;
import org.opensearch.index.analysis.TokenFilterFactory;
import org.opensearch.index.analysis.TokenizerFactory;
import org.opensearch.indices.analysis.AnalysisModule.AnalysisProvider;
import org.opensearch.plugins.AnalysisPlugin;
import org.opensearch.plugins.Plugin;

import java.io.IOException;
import java.io.StringReader;
import java.util.EnumSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;

/**
 * Korean analysis for the test node, standing in for OpenSearch's analysis-nori plugin
 * (which is not on Maven Central). It registers the names that plugin registers, with its
 * options, on top of Lucene's Nori module (lucene-analysis-nori, the node's Lucene version):
 *
 * <ul>
 *   <li>tokenizer {@code nori_tokenizer}: {@code decompound_mode} (none, discard = default,
 *       mixed), {@code discard_punctuation} (default true), {@code user_dictionary_rules}
 *       (inline rules) or {@code user_dictionary} (a file under the config directory), not
 *       both;
 *   <li>token filters {@code nori_part_of_speech} ({@code stoptags}, default Nori's stop
 *       tags), {@code nori_readingform}, {@code nori_number};
 *   <li>analyzer {@code nori}: {@code decompound_mode}, {@code user_dictionary},
 *       {@code user_dictionary_rules}, {@code stoptags}.
 * </ul>
 */
public class EmporiumNoriPlugin extends Plugin implements AnalysisPlugin {

    static final String DICTIONARY_FILE = "user_dictionary";
    static final String DICTIONARY_RULES = "user_dictionary_rules";

    @Override
    public Map<String, AnalysisProvider<TokenizerFactory>> getTokenizers() {
        return Map.of("nori_tokenizer", NoriTokenizer::new);
    }

    @Override
    public Map<String, AnalysisProvider<TokenFilterFactory>> getTokenFilters() {
        return Map.of(
            "nori_part_of_speech", PartOfSpeechFilter::new,
            "nori_readingform", ReadingFormFilter::new,
            "nori_number", NumberFilter::new
        );
    }

    @Override
    public Map<String, AnalysisProvider<AnalyzerProvider<? extends Analyzer>>> getAnalyzers() {
        return Map.of("nori", NoriAnalyzer::new);
    }

    /** The user dictionary of these settings, or null without one. */
    static UserDictionary userDictionary(Environment env, Settings settings) {
        if (settings.get(DICTIONARY_FILE) != null && settings.get(DICTIONARY_RULES) != null) {
            throw new IllegalArgumentException(
                "It is not allowed to use [" + DICTIONARY_FILE + "] in conjunction with [" + DICTIONARY_RULES + "]");
        }
        // The same reader OpenSearch's own analysis plugins use: inline list or file under the
        // config directory, blank lines and # comments dropped.
        List<String> rules = Analysis.parseWordList(env, settings, DICTIONARY_FILE, DICTIONARY_RULES, line -> line);
        if (rules == null || rules.isEmpty()) {
            return null;
        }
        String text = String.join("\n", rules) + "\n";
        try {
            return UserDictionary.open(new StringReader(text));
        } catch (IOException e) {
            throw new OpenSearchException("Failed to load nori user dictionary", e);
        }
    }

    static KoreanTokenizer.DecompoundMode decompoundMode(Settings settings) {
        String mode = settings.get("decompound_mode");
        if (mode == null) {
            return KoreanTokenizer.DEFAULT_DECOMPOUND;
        }
        return KoreanTokenizer.DecompoundMode.valueOf(mode.toUpperCase(Locale.ROOT));
    }

    static Set<POS.Tag> stopTags(Environment env, Settings settings) {
        List<String> tags = Analysis.parseWordList(env, settings, "stoptags", tag -> tag);
        if (tags == null) {
            return KoreanPartOfSpeechStopFilter.DEFAULT_STOP_TAGS;
        }
        Set<POS.Tag> out = EnumSet.noneOf(POS.Tag.class);
        for (String tag : tags) {
            out.add(POS.resolveTag(tag));
        }
        return out;
    }

    static final class NoriTokenizer extends AbstractTokenizerFactory {
        private final UserDictionary dictionary;
        private final KoreanTokenizer.DecompoundMode mode;
        private final boolean discardPunctuation;

        NoriTokenizer(IndexSettings index, Environment env, String name, Settings settings) {
            super(index, settings, name);
            this.mode = decompoundMode(settings);
            this.dictionary = userDictionary(env, settings);
            this.discardPunctuation = settings.getAsBoolean("discard_punctuation", true);
        }

        @Override
        public Tokenizer create() {
            return new KoreanTokenizer(
                KoreanTokenizer.DEFAULT_TOKEN_ATTRIBUTE_FACTORY, dictionary, mode, false, discardPunctuation);
        }
    }

    static final class PartOfSpeechFilter extends AbstractTokenFilterFactory {
        private final Set<POS.Tag> tags;

        PartOfSpeechFilter(IndexSettings index, Environment env, String name, Settings settings) {
            super(index, name, settings);
            this.tags = stopTags(env, settings);
        }

        @Override
        public TokenStream create(TokenStream input) {
            return new KoreanPartOfSpeechStopFilter(input, tags);
        }
    }

    static final class ReadingFormFilter extends AbstractTokenFilterFactory {
        ReadingFormFilter(IndexSettings index, Environment env, String name, Settings settings) {
            super(index, name, settings);
        }

        @Override
        public TokenStream create(TokenStream input) {
            return new KoreanReadingFormFilter(input);
        }
    }

    static final class NumberFilter extends AbstractTokenFilterFactory {
        NumberFilter(IndexSettings index, Environment env, String name, Settings settings) {
            super(index, name, settings);
        }

        @Override
        public TokenStream create(TokenStream input) {
            return new KoreanNumberFilter(input);
        }
    }

    static final class NoriAnalyzer extends AbstractIndexAnalyzerProvider<KoreanAnalyzer> {
        private final KoreanAnalyzer analyzer;

        NoriAnalyzer(IndexSettings index, Environment env, String name, Settings settings) {
            super(index, name, settings);
            this.analyzer = new KoreanAnalyzer(
                userDictionary(env, settings), decompoundMode(settings), stopTags(env, settings), false);
        }

        @Override
        public KoreanAnalyzer get() {
            return analyzer;
        }
    }
}
