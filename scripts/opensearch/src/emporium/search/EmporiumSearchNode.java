package emporium.search;

import org.opensearch.Version;
import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * One OpenSearch node for the backend's integration tests (scripts/services.sh start
 * search): a single-node cluster on 127.0.0.1, built from the Maven Central jars in
 * .services/opensearch-libs with its plugins on the classpath (HTTP/transport over Netty,
 * the common analysis filters, Korean analysis). Runs in the foreground until SIGTERM.
 *
 * <pre>
 *   java -cp 'classes:libs/*' emporium.search.EmporiumSearchNode \
 *       --http-port 9200 --data DIR --home DIR [--config DIR] [--transport-port 0]
 *   java -cp ... emporium.search.EmporiumSearchNode --version
 * </pre>
 *
 * Each option may instead come from the environment: EMPORIUM_SEARCH_HTTP_PORT,
 * EMPORIUM_SEARCH_DATA, EMPORIUM_SEARCH_HOME, EMPORIUM_SEARCH_CONFIG,
 * EMPORIUM_SEARCH_TRANSPORT_PORT.
 */
public final class EmporiumSearchNode extends Node {

    /** The plugins a packaged OpenSearch would load from modules/ and plugins/. */
    static final List<Class<? extends Plugin>> PLUGINS = List.of(
        Netty4Plugin.class, CommonAnalysisPlugin.class, EmporiumNoriPlugin.class);

    private EmporiumSearchNode(Environment env) {
        // true: index settings under "index.private." are refused, as in production
        super(env, PLUGINS, true);
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> opts = options(args);
        if (opts.containsKey("version")) {
            System.out.println("OpenSearch " + Version.CURRENT + " (Lucene " + org.apache.lucene.util.Version.LATEST
                + ", Korean analysis from lucene-analysis-nori " + org.apache.lucene.util.Version.LATEST + ")");
            return;
        }
        String httpPort = required(opts, "http-port");
        Path data = Path.of(required(opts, "data")).toAbsolutePath();
        Path home = Path.of(required(opts, "home")).toAbsolutePath();
        Path config = Path.of(opts.getOrDefault("config", home.resolve("config").toString())).toAbsolutePath();
        String transportPort = opts.getOrDefault("transport-port", "0");
        Files.createDirectories(data);
        Files.createDirectories(config);
        Files.createDirectories(home.resolve("logs"));

        Settings settings = Settings.builder()
            .put("cluster.name", "emporium-test")
            .put("node.name", "emporium-search")
            .put("path.home", home.toString())
            .put("path.data", data.toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("network.host", "127.0.0.1")
            .put("http.port", httpPort)
            .put("transport.port", transportPort)
            .put("discovery.type", "single-node")
            // a test node on a developer's disk: never go read-only because the disk is full-ish
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            // a 512 MB heap: count what requests hold, not what the garbage collector has not
            // collected yet, before refusing a request as too large
            .put("indices.breaker.total.use_real_memory", false)
            .build();

        // Logging first (as OpenSearch's own bootstrap does): log4j2.properties of the
        // config directory, to stdout.
        LogConfigurator.registerErrorListener();
        Environment env = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), config, () -> "emporium-search");
        LogConfigurator.setNodeName(Node.NODE_NAME_SETTING.get(env.settings()));
        LogConfigurator.configure(env);

        EmporiumSearchNode node = new EmporiumSearchNode(env);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(10, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "emporium-search-shutdown"));
        try {
            node.start();
        } catch (Throwable t) {
            t.printStackTrace();
            System.exit(1);
        }
        stopped.await();
    }

    private static Map<String, String> options(String[] args) {
        Map<String, String> out = new HashMap<>();
        String[][] fromEnv = {
            {"http-port", "EMPORIUM_SEARCH_HTTP_PORT"},
            {"transport-port", "EMPORIUM_SEARCH_TRANSPORT_PORT"},
            {"data", "EMPORIUM_SEARCH_DATA"},
            {"home", "EMPORIUM_SEARCH_HOME"},
            {"config", "EMPORIUM_SEARCH_CONFIG"},
        };
        for (String[] pair : fromEnv) {
            String v = System.getenv(pair[1]);
            if (v != null && !v.isEmpty()) {
                out.put(pair[0], v);
            }
        }
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("--version")) {
                out.put("version", "");
            } else if (a.startsWith("--") && i + 1 < args.length) {
                out.put(a.substring(2), args[++i]);
            } else {
                usage("unexpected argument: " + a);
            }
        }
        return out;
    }

    private static String required(Map<String, String> opts, String name) {
        String v = opts.get(name);
        if (v == null || v.isEmpty()) {
            usage("missing --" + name);
        }
        return v;
    }

    private static void usage(String why) {
        System.err.println("EmporiumSearchNode: " + why);
        System.err.println("usage: EmporiumSearchNode --http-port PORT --data DIR --home DIR [--config DIR] [--transport-port PORT]");
        System.err.println("       EmporiumSearchNode --version");
        System.exit(2);
    }
}
